"""What the command groups share: the socket option, error reports, and the way every command
ends when the reader of its output goes away."""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from libkiki.errors import KikiError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer


def service_group(
    sub: Any, name: str, *, help: str, description: str, peer: str, socket_name: str
) -> tuple[argparse.ArgumentParser, Any]:
    """Add ``kiki NAME`` with ``--socket`` and a required sub-command; returns both parsers."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help, description=description)
    parser.add_argument(
        "--socket",
        type=Path,
        help=f"{peer}'s socket (default: {socket_name} in the runtime directory)",
    )
    cmds = parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)
    return parser, cmds


def seconds(text: str) -> float:
    """An argparse type: a number of seconds a wait may take (a wire field in milliseconds
    holds up to 49 days; nan, inf, 0 and less are no wait at all)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"must be seconds, more than 0, at most 1e6: {text!r}")
    return value


MAX_SECONDS = 1e6


def seconds_or_none(text: str) -> float:
    """An argparse type: seconds a wait may take, where 0 is no wait (nan, inf and less than 0
    are refused)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"must be seconds, 0 or more, at most 1e6: {text!r}")
    return value


def fail(group: str, exc: KikiError) -> int:
    """Report ``exc`` the one way every command does; the exit status for it."""
    print(f"kiki {group}: {exc}", file=sys.stderr)
    return 1


class _PipeEnd(io.FileIO):
    """The raw file under ``sys.stdout``/``sys.stderr``: a write the reader has gone away from
    ends the process then and there, wherever it was written from (a ``print`` deep in a
    command, argparse's help, the flush at exit), before any ``except OSError`` can take it
    for an error worth a message."""

    discard = False  # set once a write failed for good: what is left goes nowhere
    error: OSError | None = None  # why (a full disk, an I/O error), said once on fd 2

    def write(self, data: ReadableBuffer, /) -> int:
        if self.discard:
            return memoryview(data).nbytes
        try:
            return super().write(data)
        except BrokenPipeError:
            if _on_reader_gone is None:
                reader_gone()
            self.discard = True
            _on_reader_gone()
            return memoryview(data).nbytes
        except OSError as exc:
            # Said here, where buffered and unbuffered output both fail (at a flush, or at the
            # print itself), and the command goes on to its end; it then exits with status 1.
            self.error, self.discard = exc, True
            with contextlib.suppress(OSError):
                os.write(2, f"kiki: cannot write the output: {exc.strerror or exc}\n".encode())
            return memoryview(data).nbytes


# Set by :func:`when_reader_goes`: what a write whose reader went away calls instead of ending.
_on_reader_gone: Callable[[], object] | None = None


@contextlib.contextmanager
def when_reader_goes(callback: Callable[[], object]) -> Iterator[None]:
    """Within: a write whose reader went away calls ``callback`` (on every such write; make it
    idempotent) and drops that output, instead of ending the process then and there. For a
    command that owns processes (``kiki up``): it stops them in order, then ends as ``cat``
    would (:func:`reader_gone`)."""
    global _on_reader_gone
    saved, _on_reader_gone = _on_reader_gone, callback
    try:
        yield
    finally:
        _on_reader_gone = saved


def reader_gone() -> NoReturn:
    """End as ``cat`` does when its reader goes away: killed by SIGPIPE, without a word (a
    shell reports status 141). Python ignores SIGPIPE so that a write to a closed socket
    fails with EPIPE instead of killing; it is restored only here, at the very end."""
    with contextlib.suppress(ValueError, OSError):  # ValueError: not the main thread
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGPIPE})
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGPIPE)
    # No flush here: the data left in the buffers has no reader either.
    os._exit(128 + signal.SIGPIPE)


def _guarded(stream: TextIO, fd: int) -> TextIO:
    """``stream`` rebuilt over a :class:`_PipeEnd`, when it is the process's own ``fd``
    (not a test's capture, say); else ``stream`` itself."""
    own = (sys.__stdout__, sys.__stderr__)[fd - 1]
    if own is None or stream is not own:
        return stream
    stream = own  # the interpreter's own TextIOWrapper
    try:
        if stream.fileno() != fd:
            return stream
        stream.flush()
    except (OSError, ValueError):
        return stream
    raw = _PipeEnd(fd, "w", closefd=False)
    # Unbuffered (python -u, PYTHONUNBUFFERED): the interpreter's stream writes straight to the
    # raw file; so does ours, else a line a pipeline waits for sits in a buffer.
    buffered = isinstance(stream.buffer, io.BufferedWriter)
    return io.TextIOWrapper(
        io.BufferedWriter(raw) if buffered else raw,
        encoding=stream.encoding,
        errors=stream.errors,
        line_buffering=stream.line_buffering,
        write_through=stream.write_through,
    )


@contextlib.contextmanager
def quiet_pipes() -> Iterator[None]:
    """Within: stdout and stderr end the process quietly when their reader goes away
    (:func:`reader_gone`), including at the final flush, which happens here."""
    saved = sys.stdout, sys.stderr
    if sys.stdout is not None:  # None: started with fd 1 closed
        sys.stdout = _guarded(sys.stdout, 1)
    if sys.stderr is not None:
        sys.stderr = _guarded(sys.stderr, 2)
    try:
        yield
    finally:
        try:
            failed = [_flush(stream) for stream in (sys.stdout, sys.stderr) if stream is not None]
        finally:
            sys.stdout, sys.stderr = saved
        if any(failed):
            raise SystemExit(1)


def _flush(stream: TextIO) -> bool:
    """Flush ``stream`` at the end of a command; whether its output could not be written (a full
    disk, an I/O error: said in one line on fd 2 when it happened, and the rest dropped)."""
    try:
        stream.flush()
    except ValueError:  # closed by the command
        return False
    buffer = getattr(stream, "buffer", None)
    raw = getattr(buffer, "raw", buffer)
    return isinstance(raw, _PipeEnd) and raw.error is not None
