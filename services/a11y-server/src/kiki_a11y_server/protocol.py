"""Sans-I/O core of one a11y.sock connection: bytes in, typed requests or violations out.

Each frame is verified in full (see :mod:`libkiki.flatbuf`) with the server's limits before
anything reads it. A bad frame inside an intact framing costs only that frame; an oversized
frame ends the connection, because the stream cannot be resynchronised safely.

What a peer may send when is data (:data:`RULES`): a connection takes on roles (``publisher``
once its first update is accepted, ``subscriber`` once it subscribed), some messages need a
role, and answers (``ActionResult``, ``Error``) are only taken for requests the server sent that
peer and has not given up on. A stray answer is dropped without a reply (replying to an error
with an error could ping-pong forever).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from libkiki.a11y import wire
from libkiki.errors import InvalidFrame, InvalidRequest, KikiError, MethodNotFound
from libkiki.flatbuf import Limits
from libkiki.framing import DEFAULT_MAX_FRAME, BufferAccount, FrameDecoder, Oversized, encode_frame

PUBLISHER: Final = "publisher"
SUBSCRIBER: Final = "subscriber"


@dataclass(frozen=True, slots=True)
class Rule:
    needs: str | None = None  # the role the connection must already have
    answer: bool = False  # an answer to a request the server sent this peer


RULES: Final[dict[type, Rule]] = {
    wire.Hello: Rule(),
    wire.GetInfo: Rule(),
    wire.TreeUpdate: Rule(),  # the first accepted one makes the connection a publisher
    wire.Subscribe: Rule(),  # makes it a subscriber (again: a new filter, a new snapshot)
    wire.Resync: Rule(needs=SUBSCRIBER),
    wire.Query: Rule(),
    wire.ActionRequest: Rule(),
    wire.ActionResult: Rule(needs=PUBLISHER, answer=True),
    wire.Error: Rule(needs=PUBLISHER, answer=True),
}


@dataclass(frozen=True, slots=True)
class Request:
    message: wire.Message


@dataclass(frozen=True, slots=True)
class Answer:
    """An app's answer to a request the server forwarded to it."""

    message: wire.ActionResult | wire.Error


@dataclass(frozen=True, slots=True)
class Violation:
    """The peer sent something unusable; ``reply`` goes back, then close when ``fatal``."""

    error: KikiError
    reply: bytes
    fatal: bool


@dataclass(frozen=True, slots=True)
class Stray:
    """An answer to nothing the server is waiting for (late, or made up): dropped."""

    message: wire.Message


Event = Request | Answer | Violation | Stray


def server_limits(max_nodes: int) -> Limits:
    """What a frame from a peer may contain: the schema nests 4 deep, so 8 is plenty."""
    return Limits(max_depth=8, max_tables=2 * max_nodes + 64, max_count={"Node": max_nodes})


class A11yConnection:
    def __init__(
        self,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_nodes: int = 100_000,
        pool: BufferAccount | None = None,
    ) -> None:
        self._decoder = FrameDecoder(max_frame, pool)
        self.max_frame = max_frame
        self.limits = server_limits(max_nodes)
        self.closed = False
        self.roles: set[str] = set()
        self._awaiting: set[int] = set()

    def became(self, role: str) -> None:
        self.roles.add(role)

    def expect(self, request_id: int) -> None:
        """The server sent this peer a request and will take its answer."""
        self._awaiting.add(request_id)

    def forget(self, request_id: int) -> None:
        """The server no longer waits for that answer (answered, or timed out)."""
        self._awaiting.discard(request_id)

    def receive_data(self, data: bytes) -> list[Event]:
        if self.closed:
            return []
        events: list[Event] = []
        for frame in self._decoder.feed(data):
            if isinstance(frame, Oversized):
                events.append(self._violation(frame.error, fatal=True))
                self.closed = True
                break
            try:
                message = wire.decode(frame, self.limits)
            except InvalidFrame as exc:
                # The frame boundary is intact, so the connection can go on with the next one.
                events.append(self._violation(exc, fatal=False))
                continue
            events.append(self._admit(message))
        return events

    def _admit(self, message: wire.Message) -> Event:
        name = type(message).__name__
        rule = RULES.get(type(message))
        if rule is None:
            return self._violation(
                MethodNotFound(f"the server does not take {name}"), message.request_id
            )
        if rule.needs is not None and rule.needs not in self.roles:
            error = InvalidRequest(f"{name} needs a {rule.needs} connection")
            if rule.answer:
                return Stray(message)
            return self._violation(error, message.request_id)
        if rule.answer:
            if message.request_id not in self._awaiting:
                return Stray(message)
            self._awaiting.discard(message.request_id)
            assert isinstance(message, wire.ActionResult | wire.Error)
            return Answer(message)
        return Request(message)

    def send(self, message: wire.Message) -> bytes:
        return encode_frame(wire.encode(message), self.max_frame)

    def eof(self) -> Violation | None:
        """End of input; a partial frame left over means the peer vanished mid-message."""
        self.closed = True
        if self._decoder.pending:
            error = InvalidFrame(
                f"connection closed inside a frame ({self._decoder.pending} bytes)"
            )
            self.close()
            return Violation(error, b"", fatal=True)
        return None

    def close(self) -> None:
        """The connection is gone: what it had buffered goes too (back to the shared pool)."""
        self.closed = True
        self._decoder.close()

    def _violation(
        self, error: KikiError, request_id: int = 0, *, fatal: bool = False
    ) -> Violation:
        reply = self.send(wire.Error(request_id, error.jsonrpc_code, error.message))
        return Violation(error, reply, fatal)
