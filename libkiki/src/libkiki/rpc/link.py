"""The write side of a :class:`~libkiki.rpc.Connection` and the flow control of its transport.

A :class:`Link` owns the transport once it is made and is the only code that writes to it or
closes it:

* Writes go straight to the transport. While its buffer is over the high-water mark the
  transport is paused: writers that can wait (:meth:`Link.write`) wait, and reading stops, so
  a peer that does not read what we write stops being read instead of growing our memory.
* While a chunk of input is being handled (:meth:`Link.hold` to :meth:`Link.flush`), what is
  written without waiting is collected and leaves in one write: one wake-up of the peer per
  read rather than one per pipelined request.
* An answer counts against the incoming in-flight limit until it is written: the slots of
  answers made without a task are released through :meth:`Link.release_written`, at once, at
  the end of the read, or once a full transport drains.
* Reading is also paused on request (:meth:`Link.pause_reading`, nested), and resumes only
  when neither the caller nor a full write buffer holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import TypeVar

__all__ = ["Link"]

A = TypeVar("A")
B = TypeVar("B")


class Link:
    """The transport of one connection, its writes and its pauses (see the module docstring).

    ``release(slot)`` gives an incoming request's slot back once its answer is written.
    """

    __slots__ = (
        "_answered",
        "_loop",
        "_out",
        "_release",
        "_transport",
        "_unreleased",
        "paused",
        "reading_held",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, release: Callable[[int], None]) -> None:
        self._loop = loop
        self._release = release
        self._transport: asyncio.Transport | None = None
        # Set while the transport's buffer is full; done (and None again) once it drains.
        self.paused: asyncio.Future[None] | None = None
        self.reading_held = 0  # pause_reading calls not yet resumed
        self._out: list[bytes] | None = None  # written while a chunk is handled
        # Slots answered while a chunk is handled, released when it has been written.
        self._answered: list[int] = []
        self._unreleased: list[int] = []  # answered, still in the transport's buffer

    def attach(self, transport: asyncio.Transport) -> None:
        """The transport is made (``connection_made``)."""
        self._transport = transport
        if self.reading_held:
            transport.pause_reading()  # paused before there was a transport

    @property
    def attached(self) -> bool:
        """Whether the transport is made."""
        return self._transport is not None

    @property
    def buffer_size(self) -> int:
        return 0 if self._transport is None else self._transport.get_write_buffer_size()

    # -- writing -----------------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        """Write ``data``; then wait while the transport is full."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return  # the peer is gone: whoever waits for an answer is failed by the connection
        transport.write(data)
        if self.paused is not None:
            await asyncio.shield(self.paused)

    def write_nowait(self, data: bytes) -> None:
        """Write ``data`` without waiting (collected if a chunk of input is being handled).

        For a task that is being cancelled and for what is answered while reading (the
        protocol's own errors, synchronous handlers): reading stops while the buffer is full,
        so these stay bounded too.
        """
        if self._out is not None:
            self._out.append(data)
            return
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    async def drained(self) -> None:
        """Return once the transport is not full."""
        if self.paused is not None:
            await asyncio.shield(self.paused)

    def try_write(self, encode: Callable[[A, B], bytes], a: A, b: B) -> bool:
        """Write ``encode(a, b)`` only if it would go out ahead of nothing: the transport is
        open and holds no unsent bytes. False, and nothing encoded or written, otherwise (the
        arguments are passed through rather than the bytes, so a refused write costs no
        encoding)."""
        transport = self._transport
        if transport is None or transport.is_closing() or transport.get_write_buffer_size():
            return False
        data = encode(a, b)
        if data:
            transport.write(data)
        return True

    def release_written(self, slot: int) -> None:
        """``slot``'s answer was just written without waiting: release it once it is taken."""
        if self._out is not None:
            self._answered.append(slot)  # with the chunk being handled (flush)
        elif self.paused is not None:
            self._unreleased.append(slot)  # when the transport drains (resume_writing)
        else:
            self._release(slot)

    # -- a chunk of input --------------------------------------------------------------------

    def hold(self) -> None:
        """A chunk of input is being handled: collect what is written without waiting."""
        self._out = []

    def flush(self) -> None:
        """The chunk is handled: write what it collected, release the slots it answered."""
        out = self._out
        self._out = None
        if out:
            self.write_nowait(b"".join(out) if len(out) > 1 else out[0])
        answered = self._answered
        if answered:
            if self.paused is not None:
                # Not taken yet: they count as in flight until the transport drains, as
                # answers written by tasks do.
                self._unreleased.extend(answered)
            else:
                release = self._release
                for slot in answered:
                    release(slot)
            answered.clear()

    # -- the transport's flow control --------------------------------------------------------

    def pause_writing(self) -> None:
        if self.paused is None:
            self.paused = self._loop.create_future()
            if self._transport is not None:
                self._transport.pause_reading()

    def resume_writing(self) -> None:
        paused = self.paused
        if paused is None:
            return
        if not paused.done():
            paused.set_result(None)
        self.paused = None
        for slot in self._unreleased:
            self._release(slot)
        self._unreleased.clear()
        transport = self._transport
        if transport is not None and not transport.is_closing() and not self.reading_held:
            transport.resume_reading()

    def pause_reading(self) -> None:
        self.reading_held += 1
        transport = self._transport
        if self.reading_held == 1 and transport is not None and not transport.is_closing():
            transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_held == 0:
            raise RuntimeError("resume_reading without pause_reading")
        self.reading_held -= 1
        transport = self._transport
        if (
            self.reading_held == 0
            and self.paused is None
            and transport is not None
            and not transport.is_closing()
        ):
            transport.resume_reading()

    # -- ending ------------------------------------------------------------------------------

    def close(self) -> bool:
        """Close the transport once what is buffered is sent (then ``connection_lost``); False
        if there is no transport to close."""
        if self._transport is None:
            return False
        self._transport.close()
        return True

    def abort(self) -> None:
        """Close the transport at once, dropping what is buffered."""
        if self._transport is not None:
            self._transport.abort()

    def unix_socket(self) -> socket.socket | None:
        """The transport's socket, if it is a Unix socket."""
        transport = self._transport
        raw = transport.get_extra_info("socket") if transport is not None else None
        if raw is None or raw.family != socket.AF_UNIX:
            return None
        return raw  # type: ignore[no-any-return]

    def set_write_limits(self, high: int, *, sndbuf: int | None = None) -> None:
        transport = self._transport
        if transport is None:
            return
        transport.set_write_buffer_limits(high=high)
        sock = transport.get_extra_info("socket")
        if sndbuf is not None and sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
