"""A two-way transport over two pipes: the stdin and stdout an MCP host gave ``kiki mcp``.

asyncio's own pipe transports go one way each, hand a plain protocol a fresh bytes object per
read, and take the end of input for the end of the connection. This one reads into the buffer
of a :class:`asyncio.BufferedProtocol` (what libkiki's JSON-RPC connection speaks), writes
straight to the pipe until the pipe is full, and reports the end of input apart
(``on_input_end``): a host that closes stdin is still owed the answers to what it sent, so the
end of input is not the end of the connection. The transport owns both descriptors and closes
them when it ends.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

import orjson

log = logging.getLogger(__name__)

_HIGH = 64 * 1024  # bytes written but not taken by the pipe, past which writers wait
_NEWLINE = ord("\n")


class PipePair(asyncio.Transport):
    """Reads ``reading``, writes ``writing`` (both set non-blocking), for ``protocol``.

    ``on_input_end`` is called once when ``reading`` ends (or cannot be read); a last line
    without its newline is ended first, as a host that wrote one meant it whole. The protocol's
    ``eof_received`` is never called. ``connection_lost`` comes when the transport has closed
    both descriptors: after :meth:`close` has written what was buffered, after :meth:`abort`,
    or when the host's end of ``writing`` is gone (with the error).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        reading: int,
        writing: int,
        protocol: asyncio.BufferedProtocol,
        on_input_end: Callable[[], None],
    ) -> None:
        super().__init__()
        self._loop = loop
        self._rfd = reading
        self._wfd = writing
        self._protocol = protocol
        self._on_input_end = on_input_end
        self._pending = bytearray()  # written, not yet taken by the pipe
        self._high = _HIGH
        self._low = _HIGH // 4
        self._writers_paused = False
        self._reading = False
        self._input_open = True
        self._ended_line = True  # the last byte read was a newline (or nothing was read)
        self._closing = False
        self._closed = False
        self._flush_by: float | None = None  # loop time past which close() stops flushing
        self._partial = bytearray()  # the start, written already, of the line now pending
        self.error: OSError | None = None  # what ended the transport, if not a close
        self.undelivered = 0  # answers dropped unwritten when cut off (flush bound, abort)
        os.set_blocking(reading, False)
        os.set_blocking(writing, False)
        protocol.connection_made(self)
        self.resume_reading()

    # -- reading ------------------------------------------------------------------------------

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._rfd)

    def resume_reading(self) -> None:
        if not self._reading and self._input_open and not self._closing:
            self._reading = True
            self._loop.add_reader(self._rfd, self._read_ready)

    def _read_ready(self) -> None:
        buffer = memoryview(self._protocol.get_buffer(-1))
        try:
            n = os.readv(self._rfd, [buffer])
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.info("cannot read the host's stdin: %s", exc)
            n = 0
        if n:
            self._ended_line = buffer[n - 1] == _NEWLINE
            self._protocol.buffer_updated(n)
            return
        self.pause_reading()
        self._input_open = False
        if not self._ended_line and not self._closing:
            buffer = memoryview(self._protocol.get_buffer(1))
            buffer[0] = _NEWLINE
            self._protocol.buffer_updated(1)
        self._on_input_end()

    # -- writing ------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        if not self._pending:
            try:
                n = os.write(self._wfd, data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self._fail(exc)
                return
            if n == len(data):
                return
            self._wrote(bytes(data[:n]))
            self._pending += memoryview(data)[n:]
            self._loop.add_writer(self._wfd, self._write_ready)
        else:
            self._pending += data
        if not self._writers_paused and len(self._pending) > self._high:
            self._writers_paused = True
            self._protocol.pause_writing()

    def _write_ready(self) -> None:
        try:
            n = os.write(self._wfd, self._pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc)
            return
        self._wrote(self._pending[:n])
        del self._pending[:n]
        if self._writers_paused and len(self._pending) <= self._low:
            self._writers_paused = False
            self._protocol.resume_writing()
        if not self._pending:
            self._loop.remove_writer(self._wfd)
            if self._closing:
                self._end(None)

    def _wrote(self, data: bytes | bytearray) -> None:
        """Keep the written start of the line still pending (what is dropped at the end is
        told apart, answer or notification, by its whole line)."""
        end = data.rfind(b"\n")
        if end >= 0:
            self._partial[:] = data[end + 1 :]
        else:
            self._partial += data

    def get_write_buffer_size(self) -> int:
        return len(self._pending)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = _HIGH if high is None else high
        self._low = self._high // 4 if low is None else low

    def can_write_eof(self) -> bool:
        return False

    # -- the end ------------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def flush_by(self, deadline: float) -> None:
        """Bound what :meth:`close` spends writing what is buffered: past ``deadline`` (the
        loop's time) the rest is dropped (and counted in ``undelivered``)."""
        self._flush_by = deadline

    def close(self) -> None:
        """Stop reading; end once what is buffered is written (or :meth:`flush_by` passes)."""
        if self._closing:
            return
        self._closing = True
        self.pause_reading()
        if not self._pending:
            self._end(None)
        elif self._flush_by is not None:
            self._loop.call_at(self._flush_by, self.abort)

    def abort(self) -> None:
        self._closing = True
        self.pause_reading()
        self._end(None)

    def _fail(self, exc: OSError) -> None:
        # BrokenPipeError: the host closed its end of stdout; nobody is left to answer.
        if not isinstance(exc, BrokenPipeError):
            log.warning("cannot write to the host's stdout: %s", exc)
        self._closing = True
        self.pause_reading()
        self._end(exc)

    def _end(self, exc: OSError | None) -> None:
        if self._closed:
            return
        self._closed = True
        self.error = exc
        if self._pending:
            self._loop.remove_writer(self._wfd)
            if exc is None:  # cut off, not refused: a host that closed stdout wants no more
                self.undelivered = _answers(bytes(self._partial) + bytes(self._pending))
            self._pending.clear()
        os.close(self._rfd)
        os.close(self._wfd)
        self._loop.call_soon(self._protocol.connection_lost, exc)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def _answers(lines: bytes) -> int:
    """How many answers (responses, also in batches) ``lines`` holds; a line cut short counts
    as one answer unless it is a notification's."""
    count = 0
    for line in lines.split(b"\n"):
        if not line.strip():
            continue
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError:
            count += b'"method"' not in line
            continue
        for entry in message if isinstance(message, list) else [message]:
            count += isinstance(entry, dict) and "method" not in entry
    return count
