"""Answers that come later, settled in the turn of the event loop that has them.

An :class:`asyncio.Future` runs its done-callbacks one turn of the loop after it is settled. A
call that a server forwards (the broker: a caller's request out to a provider, the provider's
answer back to the caller) would pay two such turns per call, one on each side. These two
classes settle at once, in the turn that has the answer:

* :class:`Reply` -- what a synchronous handler returns when its answer comes later (see
  :meth:`libkiki.rpc.Methods.register_sync`): the request is answered as soon as
  :meth:`Reply.set_result` or :meth:`Reply.set_exception` is called. The connection cancels it
  when the peer cancels the request or the connection ends: its :meth:`Reply.on_cancel`
  callbacks run then, and nothing is answered.
* :class:`Sent` -- a request sent by :meth:`libkiki.rpc.Connection.request_now`: its ``done``
  callback is called exactly once, with the result, the typed error, or
  :class:`asyncio.CancelledError` after :meth:`Sent.cancel`.
* :func:`after_input` -- work best done once per read rather than once per message (writing
  what a chunk of notifications queued for other connections, batched): run when the chunk of
  input being handled has been handled, in that same turn of the loop, in the order given.
  :func:`reading_input` tells whether a chunk is being handled now (whether ``after_input``
  would wait).

Callbacks run synchronously, in whatever code settles the answer (a connection's reader, a
timer): they must not block, and what they raise is logged, never passed on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Done", "Reply", "Sent", "after_input", "reading_input"]

log = logging.getLogger(__name__)

# A request's end: (result, None), (None, error), or (None, CancelledError()) once cancelled.
Done = Callable[[Any, BaseException | None], None]

_PENDING, _RESULT, _ERROR, _CANCELLED = range(4)


class _Waitable:
    """A future made on demand for whoever has to wait (a connection closing with a grace)."""

    __slots__ = ("_waiter",)

    def __init__(self) -> None:
        self._waiter: asyncio.Future[None] | None = None

    def done(self) -> bool:
        raise NotImplementedError

    def waiter(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """A future done once this is (never failed: it only says when)."""
        if self._waiter is None:
            self._waiter = loop.create_future()
            if self.done():
                self._waiter.set_result(None)
        return self._waiter

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class Reply(_Waitable):
    """A synchronous handler's answer that comes later (see the module's docstring)."""

    __slots__ = ("_cancel_callbacks", "_settle", "_state", "_value")

    def __init__(self) -> None:
        super().__init__()
        self._state = _PENDING
        self._value: Any = None
        self._settle: Callable[[Reply], None] | None = None
        self._cancel_callbacks: list[Callable[[], None]] = []

    def done(self) -> bool:
        return self._state != _PENDING

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def set_result(self, result: Any) -> None:
        self._finish(_RESULT, result)

    def set_exception(self, error: Exception) -> None:
        """The request fails with ``error`` (a :class:`~libkiki.errors.KikiError` is answered
        with its code; anything else is an internal error, as a handler's exception is)."""
        self._finish(_ERROR, error)

    def cancel(self) -> bool:
        """Give up: nothing is answered, the :meth:`on_cancel` callbacks run. False when it was
        done already."""
        if self._state != _PENDING:
            return False
        self._finish(_CANCELLED, None)
        callbacks, self._cancel_callbacks = self._cancel_callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("a reply's cancel callback failed")
        return True

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` if the reply is cancelled (not if it is answered)."""
        if self._state == _PENDING:
            self._cancel_callbacks.append(callback)

    def outcome(self) -> tuple[bool, Any]:
        """``(True, result)`` or ``(False, error)`` of a reply that is done and not cancelled."""
        if self._state == _RESULT:
            return True, self._value
        if self._state == _ERROR:
            return False, self._value
        raise asyncio.InvalidStateError("the reply is not answered")

    def bind(self, settle: Callable[[Reply], None]) -> None:
        """The connection's hook: ``settle(reply)`` once it is done (now, if it is already)."""
        if self._settle is not None:
            raise RuntimeError("a reply answers one request")
        self._settle = settle
        if self._state != _PENDING:
            settle(self)

    def _finish(self, state: int, value: Any) -> None:
        if self._state != _PENDING:
            raise asyncio.InvalidStateError("the reply is done already")
        self._state = state
        self._value = value
        if state != _CANCELLED:
            self._cancel_callbacks = []
        if self._settle is not None:
            self._settle(self)
        self._wake()


class Sent(_Waitable):
    """A request sent by :meth:`~libkiki.rpc.Connection.request_now` (see the module's
    docstring). ``cancel`` gives up on it: the peer is told, ``done`` gets CancelledError."""

    __slots__ = ("_cancel", "_done", "_finished")

    def __init__(self, done: Done, cancel: Callable[[Sent], None]) -> None:
        super().__init__()
        self._done = done
        self._cancel = cancel
        self._finished = False

    def done(self) -> bool:
        return self._finished

    def cancel(self) -> bool:
        if self._finished:
            return False
        self._cancel(self)
        return True

    def finish(self, result: Any, error: BaseException | None) -> None:
        """The connection's side: the request has ended (once; later calls do nothing)."""
        if self._finished:
            return
        self._finished = True
        try:
            self._done(result, error)
        except Exception:
            log.exception("a request's done callback failed")
        finally:
            self._wake()


class _Reading(threading.local):
    """Whether a connection of this thread's event loop is handling a chunk of input now."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending: list[Callable[[], None]] = []


_reading = _Reading()


def after_input(callback: Callable[[], None]) -> None:
    """Call ``callback()`` once the chunk of input a connection is handling now has been handled
    (every message read with it), at the end of that read, in the same turn of the event loop;
    at once when no input is being handled. What it raises is logged."""
    if _reading.depth:
        _reading.pending.append(callback)
        return
    try:
        callback()
    except Exception:
        log.exception("an after-input callback failed")


def reading_input() -> bool:
    """Whether a connection of this thread's event loop is handling a chunk of input now: then
    :func:`after_input` waits for its end, else it runs its callback at once."""
    return _reading.depth > 0


def input_starts() -> None:
    """A connection starts handling a chunk of input (:class:`~libkiki.rpc.Connection`'s)."""
    _reading.depth += 1


def input_ends() -> None:
    """The chunk is handled: the :func:`after_input` callbacks run (in the order given)."""
    reading = _reading
    reading.depth -= 1
    if reading.depth or not reading.pending:
        return
    callbacks, reading.pending = reading.pending, []
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("an after-input callback failed")
