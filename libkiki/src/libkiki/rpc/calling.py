"""Our requests to the peer: sending them, their table of pending answers, deadlines, cancelling.

Outgoing requests over the in-flight limit *wait* for a slot; the wait counts toward the
request's timeout, so a stalled peer surfaces as :class:`~libkiki.errors.Timeout`. On timeout or
cancellation of the caller the peer is sent ``notifications/cancelled`` (MCP's form).
:meth:`Calling.request_soon` sends one without a task, as a future, when it need not wait;
:meth:`Calling.request_now` likewise, with a callback called as the answer is read.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

from libkiki.errors import KikiError, Timeout
from libkiki.rpc.later import Done, Sent
from libkiki.rpc.limits import Slots
from libkiki.rpc.link import Link
from libkiki.rpc.messages import CANCELLED, Call, Params, ProgressReceived, ResponseReceived
from libkiki.rpc.progress import Progress, ProgressCallback
from libkiki.rpc.protocol import RpcCore

__all__ = ["Calling", "Deadline"]


def _no_answer(method: str, limit: float) -> Timeout:
    """What a request that got no answer within its timeout fails with."""
    return Timeout(
        f"no answer to {method} within {limit} s", data={"method": method, "timeout": limit}
    )


class Deadline:
    """What ``asyncio.timeout`` does for :meth:`Calling.request`, at half its cost: a timer
    that cancels the task, and the bookkeeping that tells that cancellation from any other.
    (On 3.11 ``asyncio.timeout`` also looks the loop up twice, a ``getpid()`` each.)"""

    __slots__ = ("_cancelling", "_handle", "_settled", "_task", "expired")

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: float | None) -> None:
        self.expired = False
        self._settled = False
        self._handle: asyncio.TimerHandle | None = None
        if limit is None:
            return
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("a request with a timeout must be made inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._handle = loop.call_at(loop.time() + limit, self._expire)

    def _expire(self) -> None:
        self._handle = None
        self.expired = True
        self._task.cancel()

    def caused_cancellation(self) -> bool:
        """After a CancelledError: whether it is ours, with no other cancellation pending."""
        if not self.expired or self._settled:
            return False
        self._settled = True
        return self._task.uncancel() <= self._cancelling

    def end(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        elif self.expired and not self._settled:
            self._settled = True
            self._task.uncancel()  # expired as the request ended some other way


class Calling:
    """The requests one connection sends and the answers it waits for.

    ``check_open()`` raises the connection's typed error once it is over; ``request_timeout``
    applies to requests given no timeout of their own (None or ``math.inf``: none).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        core: RpcCore,
        link: Link,
        progress: Progress,
        check_open: Callable[[], None],
        *,
        max_in_flight: int,
        request_timeout: float | None,
    ) -> None:
        self.request_timeout = request_timeout
        self._loop = loop
        self._core = core
        self._link = link
        self._write = link.write
        self._write_nowait = link.write_nowait
        self._progress = progress
        self._check_open = check_open
        self._slots = Slots(max_in_flight)
        self._futures: dict[int, asyncio.Future[Any]] = {}
        self._sent: dict[int, Sent] = {}  # requests answered through a callback (request_now)
        self._callbacks: dict[int, ProgressCallback] = {}  # progress wanted, by request id

    async def request(
        self,
        method: str,
        params: Params | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 -- it also cancels the call at the peer
        on_progress: ProgressCallback | None = None,
    ) -> Any:
        """Call ``method`` on the peer and return its result; its error is raised, typed.

        ``timeout`` (seconds; None for the connection's ``request_timeout``, ``math.inf`` for
        none) covers waiting for an in-flight slot too. ``on_progress`` asks for MCP progress
        (``params`` must then be a dict) and is awaited with each ``notifications/progress``,
        in the connection's reader: it should be quick.
        """
        limit = self._limit(timeout)
        self._check_open()
        deadline = Deadline(self._loop, limit)
        try:
            await self._slots.acquire(1)
            try:
                self._check_open()
                rid, data = self._core.request(method, params, progress=on_progress is not None)
                fut: asyncio.Future[Any] = self._loop.create_future()
                self._futures[rid] = fut
                if on_progress is not None:
                    self._callbacks[rid] = on_progress
                try:
                    await self._write(data)
                    result = await fut
                    if self._progress.queued(rid):
                        await self._progress.done(rid)
                    return result
                finally:
                    self._callbacks.pop(rid, None)
                    self._progress.forget(rid)
                    if self._futures.pop(rid, None) is not None:
                        fut.cancel()
                        self._abandon(rid, "timeout" if deadline.expired else "cancelled")
            finally:
                self._slots.release(1)
        except asyncio.CancelledError:
            if deadline.caused_cancellation():
                assert limit is not None  # only a deadline with a limit expires
                raise _no_answer(method, limit) from None
            raise
        finally:
            deadline.end()

    def limit(self, n: int) -> None:
        """Have at most ``n`` of our requests in flight from now on, when that is fewer than
        this end's own ``max_in_flight``: the peer said that is all it takes at once. Requests
        over it wait for a slot, as over our own limit."""
        self._slots.size = max(1, min(self._slots.size, n))

    def request_soon(
        self, method: str, params: Params | None = None, *, timeout: float | None = None
    ) -> asyncio.Future[Any] | None:
        """Send a request now and return a future of its result (or of its typed error), with
        no task: None, and nothing sent, when it would have to wait (every in-flight slot is
        taken, or the peer is not reading what we write): ``request`` waits. ``timeout`` is as
        for :meth:`request`: past it the future fails with :class:`~libkiki.errors.Timeout`.
        Either that or cancelling the future tells the peer (``notifications/cancelled``).
        """
        limit = self._limit(timeout)
        if (started := self._start_nowait(method, params)) is None:
            return None
        rid, data = started
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._futures[rid] = fut
        timer = None
        if limit is not None:
            timer = self._loop.call_at(self._loop.time() + limit, self._expire, rid, method, limit)
        fut.add_done_callback(functools.partial(self._request_done, rid, timer))
        self._write_nowait(data)
        return fut

    def _start_nowait(self, method: str, params: Params | None) -> tuple[int, bytes] | None:
        """A request's id and bytes with its in-flight slot taken, or None when it would have
        to wait (every slot taken, or the peer is not reading what we write)."""
        self._check_open()
        if self._link.paused is not None or not self._slots.try_acquire(1):
            return None
        try:
            return self._core.request(method, params)
        except BaseException:
            self._slots.release(1)
            raise

    def _expire(self, rid: int, method: str, limit: float) -> None:
        fut = self._futures.get(rid)
        if fut is None or fut.done():
            return  # answered, or cancelled with _request_done still to run: it tells the peer
        del self._futures[rid]
        self._abandon(rid, "timeout")
        fut.set_exception(_no_answer(method, limit))

    def _request_done(
        self, rid: int, timer: asyncio.TimerHandle | None, fut: asyncio.Future[Any]
    ) -> None:
        if timer is not None:
            timer.cancel()
        self._slots.release(1)
        if self._futures.pop(rid, None) is not None:  # cancelled by its caller
            self._abandon(rid, "cancelled")

    def request_now(
        self,
        method: str,
        params: Params | None = None,
        *,
        done: Done,
        timeout: float | None = None,
    ) -> Sent | None:
        """:meth:`request_soon` without a future: ``done(result, error)`` is called once, as the
        answer is read (in the reader's turn of the event loop, not one turn later as a future's
        callbacks are), or with the typed error when the timeout passes or the connection ends,
        or with :class:`asyncio.CancelledError` after :meth:`~libkiki.rpc.later.Sent.cancel`
        (the peer is then told, as for a cancelled future). None, and nothing sent, when it
        would have to wait."""
        limit = self._limit(timeout)
        if (started := self._start_nowait(method, params)) is None:
            return None
        rid, data = started
        timer = None
        if limit is not None:
            timer = self._loop.call_at(
                self._loop.time() + limit, self._expire_sent, rid, method, limit
            )
        sent = Sent(
            functools.partial(self._sent_done, timer, done),
            functools.partial(self._cancel_sent, rid),
        )
        self._sent[rid] = sent
        self._write_nowait(data)
        return sent

    def _sent_done(
        self,
        timer: asyncio.TimerHandle | None,
        done: Done,
        result: Any,
        error: BaseException | None,
    ) -> None:
        if timer is not None:
            timer.cancel()
        self._slots.release(1)
        done(result, error)

    def _expire_sent(self, rid: int, method: str, limit: float) -> None:
        sent = self._sent.pop(rid, None)
        if sent is None:
            return
        self._abandon(rid, "timeout")
        sent.finish(None, _no_answer(method, limit))

    def _cancel_sent(self, rid: int, sent: Sent) -> None:
        if self._sent.get(rid) is sent:
            del self._sent[rid]
            self._abandon(rid, "cancelled")
        sent.finish(None, asyncio.CancelledError())

    async def batch(
        self,
        calls: Sequence[Call],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 -- it also cancels the calls at the peer
    ) -> list[Any]:
        """Send ``calls`` as one batch; return, in order, one outcome per non-notification call.

        An outcome is the result, or the :class:`~libkiki.errors.KikiError` the call failed
        with (returned, not raised: the other entries may have succeeded), e.g.
        :class:`~libkiki.errors.PeerGone` for entries unanswered when the peer left. A timeout
        cancels the unanswered entries and raises :class:`~libkiki.errors.Timeout`.
        """
        limit = self._limit(timeout)
        wanted = sum(not c.notification for c in calls)
        self._check_open()
        loop = self._loop
        try:
            async with asyncio.timeout(limit) as scope:
                await self._slots.acquire(wanted)
                try:
                    self._check_open()
                    ids, data = self._core.batch(list(calls))
                    futs = {rid: loop.create_future() for rid in ids if rid is not None}
                    self._futures.update(futs)
                    try:
                        await self._write(data)
                        if futs:
                            await asyncio.wait(futs.values())
                    finally:
                        reason = "timeout" if scope.expired() else "cancelled"
                        for rid, fut in futs.items():
                            if self._futures.pop(rid, None) is not None:
                                fut.cancel()
                                self._abandon(rid, reason)
                finally:
                    self._slots.release(wanted)
        except TimeoutError:
            raise Timeout(f"no complete answer to a batch within {limit} s") from None
        return [f.exception() or f.result() for f in futs.values()]

    # -- what the peer sends about them ------------------------------------------------------

    def answered(self, event: ResponseReceived) -> None:
        """The peer answered one of our requests."""
        fut = self._futures.pop(event.id, None)
        if fut is not None:
            if not fut.done():
                if event.error is None:
                    fut.set_result(event.result)
                else:
                    fut.set_exception(event.error)
        elif (sent := self._sent.pop(event.id, None)) is not None:
            sent.finish(event.result, event.error)

    def progressed(self, event: ProgressReceived) -> None:
        callback = self._callbacks.get(event.id)
        if callback is not None:
            self._progress.queue(event.id, callback, event.params)

    def fail_all(self, lost: Callable[[], KikiError]) -> None:
        """The connection is over: every request waiting for an answer fails with ``lost()``."""
        for rid in self._core.abandon_all():
            fut = self._futures.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_exception(lost())
            elif (sent := self._sent.pop(rid, None)) is not None:
                # One turn later, as a future's callbacks would run: connections shut together
                # (a server stopping) are all shut before any of their requests' ends is told,
                # so a call forwarded from one to another ends with its caller's connection,
                # unanswered, not with an answer about the other's end.
                self._loop.call_soon(sent.finish, None, lost())

    def waiting(self) -> list[asyncio.Future[Any]]:
        """Futures done once each pending request is (a connection closing with a grace)."""
        running: list[asyncio.Future[Any]] = [f for f in self._futures.values() if not f.done()]
        running.extend(r.waiter(self._loop) for r in self._sent.values())
        return running

    def _limit(self, timeout: float | None) -> float | None:
        limit = self.request_timeout if timeout is None else timeout
        return None if limit is None or math.isinf(limit) else limit

    def _abandon(self, rid: int, reason: str) -> None:
        if self._core.abandon(rid):
            self._write_nowait(
                self._core.notification(CANCELLED, {"requestId": rid, "reason": reason})
            )
