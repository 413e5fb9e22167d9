"""Sans-I/O core of one a11y.sock connection: bytes in, typed requests or violations out."""

from __future__ import annotations

from dataclasses import dataclass

from libkiki import a11y_wire as wire
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


class A11yConnection:
    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._decoder = FrameDecoder(max_frame)
        self.max_frame = max_frame
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
                events.append(Request(wire.decode(frame)))
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
