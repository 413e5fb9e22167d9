"""Signal handlers on an asyncio loop that can neither lose a signal nor be flooded by one.

``loop.add_signal_handler`` learns of a signal only from the byte that CPython's C-level handler
writes to the loop's self-pipe. When that socket is full -- a loop that fell behind a fast
interval timer's SIGALRMs: a few hundred one-byte writes fill it -- CPython drops the byte and
the signal is lost for ever (a SIGTERM that never stops the service). Worse, asyncio asks for a
warning on a full pipe, which the C handler queues through a lock (``_PyEval_AddPendingCall``,
"not signal-safe" says CPython): a signal that lands while the thread holds that lock deadlocks
the process (seen: a publisher asleep on a futex with SIGALRM and SIGTERM blocked, for good).
And it queues one callback per byte, so a backlog of timer signals becomes a backlog of
callbacks that everything else, a stop request included, waits behind.

:func:`add_signal_handler` installs a Python-level handler instead. CPython records a delivered
signal in a per-signal flag that nothing can drop, and runs the handler in the main thread (the
loop's) at its next bytecode; the handler queues the callback with ``call_soon_threadsafe``,
which queues it even when its own wake-up write fails, unless that signal's callback is queued
already: however often a signal arrives before its callback runs, the callback runs once.
The process's wake-up fd (``signal.set_wakeup_fd``, without the warning) is a socket pair of
ours that the loop watches, so that a loop asleep in ``epoll_wait`` wakes up to run the handler
even when the kernel delivered the signal to another thread; when that socket is full the loop
is awake anyway, as it has something to read.

Signal dispositions and the wake-up fd are process-wide: one loop at a time owns them here,
from its first handler until its last is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["add_signal_handler", "remove_signal_handler"]


class _LoopSignals:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._callbacks: dict[int, Callable[[], object]] = {}
        self._previous: dict[int, Any] = {}
        self._queued: set[int] = set()
        self._rsock, self._wsock = socket.socketpair()
        self._rsock.setblocking(False)
        self._wsock.setblocking(False)
        try:
            # Raises ValueError outside the main thread, before anything is changed.
            self._old_wakeup = signal.set_wakeup_fd(self._wsock.fileno(), warn_on_full_buffer=False)
        except BaseException:
            self._rsock.close()
            self._wsock.close()
            raise
        loop.add_reader(self._rsock.fileno(), self._drain)

    @property
    def empty(self) -> bool:
        return not self._callbacks

    def add(self, sig: int, callback: Callable[[], object]) -> None:
        if sig not in self._previous:
            self._previous[sig] = signal.signal(sig, self._handler)
            # SA_RESTART, as asyncio's handlers have it: a signal that lands in a thread blocked
            # in a system call (C code, an executor's read) does not fail that call with EINTR.
            signal.siginterrupt(sig, False)
        self._callbacks[sig] = callback

    def remove(self, sig: int) -> bool:
        self._queued.discard(sig)
        found = self._callbacks.pop(sig, None) is not None
        if sig in self._previous:
            signal.signal(sig, self._previous.pop(sig))
        return found

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        # Runs between two bytecodes of whatever the main thread was doing: it must not raise
        # and must not touch the loop's state beyond the thread-safe queueing.
        if signum in self._queued or signum not in self._callbacks:
            return
        self._queued.add(signum)
        try:
            self.loop.call_soon_threadsafe(self._dispatch, signum)
        except RuntimeError:  # the loop is closed: nobody to tell
            self._queued.discard(signum)

    def _dispatch(self, signum: int) -> None:
        # Cleared first: a signal that arrives while the callback runs queues it again.
        self._queued.discard(signum)
        callback = self._callbacks.get(signum)
        if callback is not None:
            callback()

    def _drain(self) -> None:
        # The bytes only wake the loop; the handlers' flags say which signals came.
        with contextlib.suppress(OSError):
            self._rsock.recv(4096)

    def close(self) -> None:
        for sig in list(self._previous):
            self.remove(sig)
        if not self.loop.is_closed():
            self.loop.remove_reader(self._rsock.fileno())
        with contextlib.suppress(ValueError, OSError):
            current = signal.set_wakeup_fd(self._old_wakeup)
            if current != self._wsock.fileno():
                # Someone replaced ours since (asyncio's add_signal_handler does): theirs stays.
                signal.set_wakeup_fd(current)
        self._rsock.close()
        self._wsock.close()


_active: _LoopSignals | None = None


def add_signal_handler(
    loop: asyncio.AbstractEventLoop, sig: int, callback: Callable[[], object]
) -> None:
    """Call ``callback()`` on ``loop`` when ``sig`` arrives (once, however many arrive before it
    runs). Main thread only (``ValueError`` otherwise), like ``loop.add_signal_handler``, which
    it replaces; :func:`remove_signal_handler` restores the signal's previous disposition."""
    global _active
    if _active is not None and _active.loop is not loop:
        if not _active.loop.is_closed():
            raise RuntimeError("signal handlers are owned by another running event loop")
        _active.close()  # a closed loop's leftovers
        _active = None
    if _active is None:
        _active = _LoopSignals(loop)
    _active.add(sig, callback)


def remove_signal_handler(loop: asyncio.AbstractEventLoop, sig: int) -> bool:
    """Undo :func:`add_signal_handler` for ``sig``; False if ``loop`` had no handler for it."""
    global _active
    if _active is None or _active.loop is not loop:
        return False
    found = _active.remove(sig)
    if _active.empty:
        _active.close()
        _active = None
    return found
