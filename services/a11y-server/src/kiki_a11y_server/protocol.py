"""Sans-I/O core of one a11y.sock connection: bytes in, typed requests or violations out.

Each frame is verified in full (see :mod:`libkiki.a11y.flat`) with the server's limits before
anything reads it. A bad frame inside an intact framing costs only that frame; an oversized
frame ends the connection, because the stream cannot be resynchronised safely.
"""

from __future__ import annotations

from dataclasses import dataclass

from libkiki import a11y_wire as wire
from libkiki.a11y.flat import Limits
from libkiki.errors import InvalidFrame, KikiError
from libkiki.framing import DEFAULT_MAX_FRAME, FrameDecoder, Oversized, encode_frame


@dataclass(frozen=True, slots=True)
class Request:
    message: wire.Message


@dataclass(frozen=True, slots=True)
class Violation:
    """The peer sent something unusable; ``reply`` goes back, then close when ``fatal``."""

    error: KikiError
    reply: bytes
    fatal: bool


Event = Request | Violation


def server_limits(max_nodes: int) -> Limits:
    """What a frame from a peer may contain: the schema nests 4 deep, so 8 is plenty."""
    return Limits(max_depth=8, max_tables=2 * max_nodes + 64, max_count={"Node": max_nodes})


class A11yConnection:
    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME, max_nodes: int = 100_000) -> None:
        self._decoder = FrameDecoder(max_frame)
        self.max_frame = max_frame
        self.limits = server_limits(max_nodes)
        self.closed = False

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
                events.append(Request(wire.decode(frame, self.limits)))
            except InvalidFrame as exc:
                # The frame boundary is intact, so the connection can go on with the next one.
                events.append(self._violation(exc, fatal=False))
        return events

    def send(self, message: wire.Message) -> bytes:
        return encode_frame(wire.encode(message), self.max_frame)

    def eof(self) -> Violation | None:
        """End of input; a partial frame left over means the peer vanished mid-message."""
        self.closed = True
        if self._decoder.pending:
            error = InvalidFrame(
                f"connection closed inside a frame ({self._decoder.pending} bytes)"
            )
            return Violation(error, b"", fatal=True)
        return None

    def _violation(self, error: KikiError, *, fatal: bool) -> Violation:
        reply = self.send(wire.Error(0, error.jsonrpc_code, error.message))
        return Violation(error, reply, fatal)
