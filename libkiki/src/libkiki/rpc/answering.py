"""The peer's requests to us: running their handlers and answering them.

Incoming requests run concurrently, each in its own task; the core has already answered those
over the in-flight limit (``LimitExceeded``). ``notifications/cancelled`` cancels the handler's
task and its response is never sent (MCP). A synchronous handler (see
:mod:`libkiki.rpc.methods`) is answered as it is read; one that returns an
:class:`asyncio.Future` is answered when the future is done, without a task (cancelling the
request cancels the future); one that returns a :class:`~libkiki.rpc.later.Reply` is answered as
the reply is settled, in that same turn of the event loop. An answer counts against the
in-flight limit until it is written (:meth:`~libkiki.rpc.link.Link.release_written`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any

from libkiki.errors import INTERNAL_ERROR
from libkiki.peer import PeerCred
from libkiki.rpc.later import Reply
from libkiki.rpc.link import Link
from libkiki.rpc.messages import CancelRequested, Incoming, error_response
from libkiki.rpc.methods import Methods, RequestContext, dispatch, dispatch_now, finish, settled
from libkiki.rpc.protocol import RpcCore

if TYPE_CHECKING:
    from libkiki.rpc.connection import Connection

__all__ = ["Answering"]

log = logging.getLogger(__name__)


class Answering:
    """The handlers running for one connection's peer, and their answers.

    ``connection`` and ``peer`` are what each handler's :class:`RequestContext` names;
    ``name`` is for the log.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        core: RpcCore,
        link: Link,
        methods: Methods,
        connection: Connection,
        peer: PeerCred,
        name: str,
    ) -> None:
        self._methods = methods
        self._loop = loop
        self._core = core
        self._complete = core.complete
        self._release = core.release
        self._link = link
        self._write_nowait = link.write_nowait
        self._release_written = link.release_written
        self._connection = connection
        self._peer = peer
        self._name = name
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self._rests: dict[int, Awaitable[Any]] = {}  # synchronous handlers' rests, not started
        # Synchronous handlers' answers still to come, futures or Replies, by slot.
        self._later: dict[int, asyncio.Future[Any] | Reply] = {}

    def start(self, event: Incoming) -> None:
        """Handle a request or notification just read."""
        methods = self._methods
        if event.notification and (inline := methods.inline_handler(event.method)):
            try:
                inline(event.message.get("params"))
            except Exception:
                log.exception("%s: notification %s failed", self._name, event.method)
            self._complete(event.slot, None)
            self._release(event.slot)
            return
        ctx = RequestContext(
            self._connection,
            self._peer,
            event.method,
            event.id,
            event.notification,
            event.meta,
            event.progress_token,
        )
        # A synchronous handler answers here, unless a request read before it still runs in a
        # task: then it queues behind it in a task too, so that answers that need no waiting
        # leave in the order their requests came, as they did when every request had a task.
        if methods.has_sync and not self.tasks and self._link.paused is None:
            answer = dispatch_now(methods, ctx, event.message)
            if isinstance(answer, dict):
                # Answered as read: no task, no extra turn of the event loop. The slot is
                # released once the answer is handed to the transport (Link.flush).
                if (data := self._complete(event.slot, answer)) is not None:
                    self._write_nowait(data)
                self._release_written(event.slot)
                return
            if isinstance(answer, Reply):
                # Answered as the reply is settled, in that turn of the loop: no task either.
                self._later[event.slot] = answer
                answer.bind(functools.partial(self._settle, event))
                return
            if isinstance(answer, asyncio.Future):
                # Answered when the future is done, by its callback: no task either.
                self._later[event.slot] = answer
                answer.add_done_callback(functools.partial(self._settle, event))
                return
            if answer is not None:
                self._rests[event.slot] = answer
        # Never run once the connection is shut: the reader drops input from then on.
        # Not an eager task (3.12+): measured on 3.13, pinned, 7 interleaved rounds, they took
        # 2 µs off a forwarded call's 225 (tests/bench), not worth handlers that start before
        # the rest of their read is seen. Synchronous handlers above are the opt-in for
        # handlers that never wait.
        self.tasks[event.slot] = self._loop.create_task(self._run(event, ctx))

    def cancel_requested(self, event: CancelRequested) -> None:
        """The peer cancelled one of its requests: its task or its later answer is cancelled."""
        task = self.tasks.get(event.slot)
        answer = self._later.get(event.slot)
        if task is not None or answer is not None:
            log.debug("%s: peer cancelled request %r: %s", self._name, event.id, event.reason)
        if task is not None:
            self._cancel(event.slot, task)
        elif answer is not None:
            answer.cancel()

    def cancel_all(self) -> None:
        """The connection is over: cancel every handler (not the current task) and later
        answer."""
        me = asyncio.current_task()
        for slot, task in self.tasks.items():
            if task is not me:
                self._cancel(slot, task)
        for answer in list(self._later.values()):
            answer.cancel()

    def running(self) -> list[asyncio.Future[Any]]:
        """Futures done once each handler is (not the current task's)."""
        me = asyncio.current_task()
        running: list[asyncio.Future[Any]] = [t for t in self.tasks.values() if t is not me]
        running.extend(
            a if isinstance(a, asyncio.Future) else a.waiter(self._loop)
            for a in self._later.values()
        )
        return running

    def _settle(self, event: Incoming, answer: asyncio.Future[Any] | Reply) -> None:
        """A synchronous handler's future or reply is done: answer it (not if it was
        cancelled)."""
        self._later.pop(event.slot, None)
        response = None if answer.cancelled() else settled(event.method, event.id, answer)
        if (data := self._complete(event.slot, response)) is not None:
            self._write_nowait(data)
        self._release_written(event.slot)

    def _cancel(self, slot: int, task: asyncio.Task[None]) -> None:
        task.cancel()
        # A task cancelled before its first step never enters _run, whose finally releases the
        # slot: reap it when it is done (only cancelled tasks pay for the callback).
        task.add_done_callback(functools.partial(self._reap, slot))
        rest = self._rests.pop(slot, None)
        if rest is not None:
            # The task had not started: it will never await the rest of the handler, so the
            # rest is closed here (never run, as an async handler's task cancelled this early).
            if isinstance(rest, Coroutine):
                rest.close()
            elif isinstance(rest, asyncio.Future):
                rest.cancel()

    def _reap(self, slot: int, task: asyncio.Task[None]) -> None:
        if self.tasks.get(slot) is not task:
            return  # _run's finally has released it (and the slot may be another's now)
        del self.tasks[slot]
        if (data := self._complete(slot, None)) is not None:
            self._write_nowait(data)  # the rest of a batch this entry belonged to
        self._release(slot)

    async def _run(self, event: Incoming, ctx: RequestContext) -> None:
        response: dict[str, Any] | None
        pending = self._rests.pop(event.slot, None)
        try:
            try:
                if pending is None:
                    response = await dispatch(self._methods, ctx, event.message)
                else:
                    response = await finish(event.method, event.id, pending)
            except asyncio.CancelledError:
                if (data := self._complete(event.slot, None)) is not None:
                    self._write_nowait(data)  # the rest of a batch this entry belonged to
                raise
            except Exception:
                # Handlers' own exceptions never get here (the method guard answers them): this
                # is a fault in the dispatch machinery, and it must not end the connection.
                log.exception("%s: dispatching %s failed", self._name, event.method)
                response = (
                    None if event.notification else error_response(event.id, dict(INTERNAL_ERROR))
                )
            if (data := self._complete(event.slot, response)) is not None:
                await self._link.write(data)
        finally:
            # Released only once written: a peer that does not read its answers runs into its
            # in-flight limit instead of into our memory.
            self.tasks.pop(event.slot, None)
            self._release(event.slot)
