"""Sans-I/O framing cores: bytes in, frames (or typed errors) out. No sockets, no event loop.

Two framings are used on Kiki's sockets:

* :class:`LineDecoder` -- newline-delimited JSON (one JSON text per ``\\n``-terminated line), used
  by ``tools.sock``, ``sensors.sock`` and ``updater.sock``. A line longer than ``max_line`` is
  *skipped up to its newline* and reported once as :class:`~libkiki.errors.FrameTooLarge`; the
  lines after it are still delivered, so one oversized request costs only that request.
* :class:`FrameDecoder` -- size-prefixed binary frames (a little-endian ``uint32`` length, then
  that many bytes; the layout of FlatBuffers' size-prefixed buffers), used by ``a11y.sock``. A
  length beyond ``max_frame`` cannot be skipped safely (the peer may be sending garbage), so the
  decoder reports it and refuses further input: the connection must be closed.

Both buffer at most their limit plus one read, whatever the peer sends. A server's frame
decoders may also draw on a :class:`BufferPool`, which bounds the bytes of unfinished frames held
across all its connections, and those of each uid, so that one user holding partial frames
cannot make the server refuse everyone else's: the peer whose frame would go past either gets a
:class:`~libkiki.errors.LimitExceeded` and must be closed. :meth:`FrameDecoder.close` gives a
decoder's bytes back (to the allocator and to the pool) when its connection ends.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from libkiki.errors import FrameTooLarge, LimitExceeded, ProtocolError

DEFAULT_MAX_LINE = 1 << 20  # 1 MiB
DEFAULT_MAX_FRAME = 16 << 20  # 16 MiB

_LEN = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class Oversized:
    """A line or frame that broke the size limit, or that the shared :class:`BufferPool` has no
    room for; ``error`` is ready to send to the peer."""

    error: FrameTooLarge | LimitExceeded


class LineDecoder:
    """Splits a byte stream into lines without their terminator (``\\r\\n`` is accepted too)."""

    __slots__ = ("_buf", "_discarding", "_scan_from", "max_line")

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._scan_from = 0
        self._discarding = 0  # bytes of an oversized line skipped so far; 0 when not skipping

    def feed(self, data: bytes) -> Iterator[bytes | Oversized]:
        """Consume ``data``; yield each complete line, or an :class:`Oversized` marker."""
        if self._discarding:
            nl = data.find(b"\n")
            if nl < 0:
                self._discarding += len(data)
                return
            size = self._discarding + nl
            self._discarding = 0
            yield Oversized(FrameTooLarge(size, self.max_line))
            data = data[nl + 1 :]
        buf = self._buf
        buf += data
        start = 0
        while True:
            nl = buf.find(b"\n", max(start, self._scan_from))
            if nl < 0:
                break
            self._scan_from = 0
            if nl - start > self.max_line:
                yield Oversized(FrameTooLarge(nl - start, self.max_line))
            else:
                end = nl - 1 if nl > start and buf[nl - 1] == 0x0D else nl
                yield bytes(buf[start:end])
            start = nl + 1
        del buf[:start]
        if len(buf) > self.max_line:
            # No newline within the limit: drop what we hold and skip to the next newline.
            self._discarding = len(buf)
            buf.clear()
            self._scan_from = 0
        else:
            self._scan_from = len(buf)

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held or skipped so far: non-zero at EOF means truncation."""
        return len(self._buf) + self._discarding


def encode_line(payload: bytes) -> bytes:
    if b"\n" in payload:
        raise ValueError("a line payload must not contain a newline")
    return payload + b"\n"


class BufferPool:
    """Bytes of unfinished frames held for all connections, at most ``limit``, and for the
    connections of one uid, at most ``per_user`` (``exempt`` uids are held only to ``limit``)."""

    __slots__ = ("by_uid", "exempt", "limit", "per_user", "used")

    def __init__(
        self, limit: int, per_user: int | None = None, exempt: frozenset[int] = frozenset()
    ) -> None:
        self.limit = limit
        self.per_user = limit if per_user is None else per_user
        self.exempt = exempt
        self.used = 0
        self.by_uid: dict[int, int] = {}

    def account(self, uid: int) -> BufferAccount:
        """What one connection, of a peer of ``uid``, draws on the pool through."""
        return BufferAccount(self, uid)


class BufferAccount:
    __slots__ = ("pool", "uid")

    def __init__(self, pool: BufferPool, uid: int) -> None:
        self.pool = pool
        self.uid = uid

    def resize(self, held: int, wanted: int) -> LimitExceeded | None:
        """Let a decoder holding ``held`` bytes hold ``wanted``; the error (nothing changed) if
        that would go past a limit. Shrinking always succeeds."""
        pool, grow = self.pool, wanted - held
        mine = pool.by_uid.get(self.uid, 0)
        if grow > 0:
            if pool.used + grow > pool.limit:
                return LimitExceeded(
                    f"the server holds too many bytes of unfinished frames (limit {pool.limit} "
                    "for all connections); try again later",
                    data={"limit": pool.limit},
                )
            if self.uid not in pool.exempt and mine + grow > pool.per_user:
                return LimitExceeded(
                    f"too many bytes of unfinished frames from uid {self.uid} (limit "
                    f"{pool.per_user} per user)",
                    data={"limit": pool.per_user},
                )
        pool.used += grow
        if mine + grow:
            pool.by_uid[self.uid] = mine + grow
        else:
            pool.by_uid.pop(self.uid, None)  # a uid that comes once must not stay in the table
        return None


class FrameDecoder:
    """Splits a byte stream into size-prefixed frames (the prefix is not part of the frame)."""

    __slots__ = ("_buf", "_failed", "_held", "_pool", "max_frame")

    def __init__(
        self, max_frame: int = DEFAULT_MAX_FRAME, pool: BufferAccount | None = None
    ) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._failed: ProtocolError | None = None
        self._pool = pool
        self._held = 0  # bytes charged to the pool

    def feed(self, data: bytes) -> Iterator[bytes | Oversized]:
        if self._failed is not None:
            raise self._failed
        buf = self._buf
        buf += data
        pos = 0
        while len(buf) - pos >= _LEN.size:
            (size,) = _LEN.unpack_from(buf, pos)
            if size > self.max_frame:
                self._fail()
                yield Oversized(FrameTooLarge(size, self.max_frame))
                return
            end = pos + _LEN.size + size
            if len(buf) < end:
                break
            yield bytes(buf[pos + _LEN.size : end])
            pos = end
        del buf[:pos]
        if self._pool is not None and len(buf) != self._held:
            if (refused := self._pool.resize(self._held, len(buf))) is not None:
                self._fail()
                yield Oversized(refused)
                return
            self._held = len(buf)

    def _fail(self) -> None:
        self._failed = ProtocolError("the connection is closed after a refused frame")
        self.close()

    def close(self) -> None:
        """Drop what is buffered (an unfinished frame) and give its bytes back to the pool."""
        self._buf = bytearray()  # a new one: clear() may keep the old allocation
        if self._pool is not None:
            self._pool.resize(self._held, 0)
        self._held = 0

    @property
    def pending(self) -> int:
        return len(self._buf)


def encode_frame(payload: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    if len(payload) > max_frame:
        raise FrameTooLarge(len(payload), max_frame)
    return _LEN.pack(len(payload)) + payload
