"""Forwarded calls: a tools/call the core admitted for a provider goes out on the provider's
connection, and its reply (or its end: cancelled, timed out, the provider gone) is settled by the
core and audited before the caller is answered; and the duplicates of a keyed call (an
idempotency key) that wait for its answer. A keyed call whose caller leaves mid-call is
*detached*: it keeps waiting for its provider (bounded by its own timeout and by
``max_detached_calls``), so that its answer is recorded under its key and a retry gets it rather
than running the tool a second time. I/O only; the decisions are
:class:`~kiki_tool_broker.calls.Calls`'."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from kiki_tool_broker.calls import Admitted, Answer, AuditRecord, Calls, Joining
from libkiki.rpc import Connection, Reply, RequestContext, Sent, after_input

log = logging.getLogger(__name__)


class Forwarder:
    """The calls in flight to providers. ``write`` appends a settled call's audit line (and
    counts it); it raises when the line cannot be written, which the caller is then told."""

    def __init__(
        self,
        calls: Calls,
        write: Callable[[AuditRecord], None],
        counters: Counter[str] | None = None,
    ) -> None:
        self.calls = calls
        self._write = write
        self.counters: Counter[str] = Counter() if counters is None else counters
        # Keyed calls whose caller left, still waiting for their provider's answer (by the
        # answer nobody takes any more).
        self._detached: dict[Reply, Sent | asyncio.Future[Any]] = {}
        # Calls that had to wait for a provider slot or relay progress: in tasks.
        self._forwarding: set[asyncio.Task[Any]] = set()
        # Duplicates of keyed calls running, by the running call's idempotency token.
        self._joined: dict[int, list[tuple[Joining, asyncio.Future[dict[str, Any]]]]] = {}

    def join(self, joining: Joining) -> asyncio.Future[dict[str, Any]]:
        """The answer of a duplicate of a keyed call running: that call's, once it has one
        (:meth:`settled`)."""
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._joined.setdefault(joining.token, []).append((joining, answer))
        return answer

    def settled(self, call: Admitted, answer: Answer | None) -> None:
        """A call's audit line is written (``answer`` None: it was cancelled, or its line could
        not be written): its idempotency key keeps its answer, or forgets it, and the
        duplicates that joined it are audited and answered."""
        if call.token is None:
            return
        first = self.calls.release(call, answer, time.monotonic())
        waiting = self._joined.pop(call.token, [])
        if first is None:
            return
        for joining, future in waiting:
            if future.done():  # its caller cancelled or left
                self._write_joined(
                    AuditRecord(
                        joining.caller,
                        joining.tool,
                        "cancelled",
                        None,
                        joining.arguments,
                        joining.provider,
                        joining.started,
                        on_behalf_of=joining.on_behalf_of,
                    ),
                    future,
                )
                continue
            joined = self.calls.joined(joining, first)
            if not self._write_joined(joined, future):
                continue
            if joined.error is not None:
                future.set_exception(joined.error)
            else:
                assert joined.result is not None
                future.set_result(joined.result)

    def _write_joined(self, record: AuditRecord, future: asyncio.Future[dict[str, Any]]) -> bool:
        """Write a duplicate's audit line. One that cannot be written (a full disk) is logged
        and counted (``audit_errors``) and is the duplicate's answer if its caller is still
        there (-32603); it never stops the other duplicates from being audited and answered."""
        try:
            self._write(record)
        except Exception as exc:
            self.counters["audit_errors"] += 1
            log.exception(
                "the audit line of a duplicate call of %s could not be written", record.tool
            )
            if not future.done():
                future.set_exception(exc)
            return False
        return True

    def forward_soon(self, call: Admitted, request: RequestContext) -> Reply:
        """Forward a call; its answer is a :class:`~libkiki.rpc.later.Reply` that the
        provider's reply settles.

        The request goes out at once, with no task, when the provider has a free in-flight
        slot and there is no progress to relay: its reply is then audited and answered as it
        is read (:meth:`_completed`), in the same turn of the event loop. Otherwise a task
        waits for the slot and relays the progress (:meth:`_forward`). Either way the audit
        line is written before the caller is answered, also when the call is cancelled before
        it got anywhere.
        """
        if request.progress_token is None:
            answer = Reply()
            try:
                sent = call.tool.provider.connection.request_now(
                    "tools/call",
                    call.params,
                    timeout=self.calls.config.call_timeout,
                    done=functools.partial(self._completed, answer, call),
                )
            except Exception as exc:  # the connection has just closed (KikiError), or a bug:
                # either way the call fails through _completed, audited like any other
                self._completed(answer, call, None, exc)
                return answer
            if sent is not None:
                answer.on_cancel(
                    functools.partial(self._caller_done, answer, call, sent, request.connection)
                )
                return answer
        task = asyncio.ensure_future(self._forward(call, request))
        self._forwarding.add(task)
        task.add_done_callback(self._forwarding.discard)
        return self.answer_later(call, task, request.connection)

    def answer_later(
        self, call: Admitted, sent: asyncio.Future[Any], caller: Connection | None = None
    ) -> Reply:
        """The caller's answer to a call whose tool side ends with ``sent``: settled (audited
        first) by :meth:`_completed`. The caller cancelling cancels ``sent``, which tells a
        provider; so does the caller leaving, except for a keyed call (:meth:`_caller_done`)."""
        answer = Reply()
        sent.add_done_callback(functools.partial(self._future_done, answer, call))
        answer.on_cancel(functools.partial(self._caller_done, answer, call, sent, caller))
        return answer

    def _caller_done(
        self,
        answer: Reply,
        call: Admitted,
        sent: Sent | asyncio.Future[Any],
        caller: Connection | None,
    ) -> None:
        """The caller's answer was cancelled: the caller cancelled or left. A keyed call whose
        caller left (its connection closed: a relay crashing, a link dropping) may already
        have run, and its retry is on the way: it goes on until its provider answers or its
        timeout passes, and that answer is kept for the retry (and given to any duplicate that
        joins it meanwhile). A cancellation the caller asked for, an unkeyed call, or one past
        ``max_detached_calls``, is cancelled at the provider."""
        if sent.done():
            return
        if call.token is not None and caller is not None and caller.closed:
            if len(self._detached) < self.calls.config.max_detached_calls:
                self._detached[answer] = sent
                self.counters["detached_calls"] += 1
                return
            self.counters["detached_refused"] += 1
        sent.cancel()

    @property
    def detached(self) -> int:
        """Keyed calls running now whose caller has left."""
        return len(self._detached)

    def _future_done(self, answer: Reply, call: Admitted, sent: asyncio.Future[Any]) -> None:
        """The tool's side ended in a future (a task waiting for a provider slot or relaying
        progress, or a built-in tool that waited)."""
        if sent.cancelled():
            self._completed(answer, call, None, asyncio.CancelledError())
            return
        error = sent.exception()
        self._completed(answer, call, None if error is not None else sent.result(), error)

    def _completed(
        self, answer: Reply, call: Admitted, output: Any, error: BaseException | None
    ) -> None:
        """The tool's side of a call that was not answered at once is over (a provider's
        reply, its error, or CancelledError: the caller cancelled or left, and there is nobody
        to answer): audit it, then answer the caller. An error of the audit itself (a full
        disk) is the caller's answer too: an internal error.

        The answer is settled once the provider's read that brought the reply is handled
        (:func:`~libkiki.rpc.after_input`), still in that turn of the event loop: what the
        provider wrote before its reply in that read (a ``kiki/emit``) is written to its
        subscribers first (their flush was queued at the emit), so a subscriber that is also
        the caller reads them in the order the provider wrote them."""
        self._detached.pop(answer, None)
        if isinstance(error, asyncio.CancelledError):
            try:
                self._write(self.calls.cancelled(call))
            finally:
                self.settled(call, None)
            return
        settled = self.calls.settle(call, output, error)
        try:
            self._write(settled)
        except Exception as exc:  # a full disk
            self.settled(call, None)
            after_input(functools.partial(_fail, answer, exc))
            return
        if settled.error is not None:
            after_input(functools.partial(_fail, answer, settled.error))
        else:
            assert settled.result is not None
            after_input(functools.partial(_answer, answer, settled.result))
        self.settled(call, settled)

    async def finish(self) -> None:
        """Cancel the calls still waiting for a provider slot, and the detached ones (their
        keys live in memory only: a retry after the restart runs anyway), and wait for them
        (bounded), so that their audit lines are written."""
        pending = [*self._forwarding, *self._detached.values()]
        for sent in pending:
            sent.cancel()  # a Sent's audit line is written here, at once
        tasks = [f for f in pending if isinstance(f, asyncio.Future)]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
            await asyncio.sleep(0)  # their done-callbacks write the audit lines

    async def _forward(self, call: Admitted, request: RequestContext) -> Any:
        """The provider's reply, waiting for an in-flight slot on its connection if need be and
        relaying its progress to the caller as it comes."""

        async def relay(progress: dict[str, Any]) -> None:
            if request.connection.closed:  # a detached call: nobody to tell
                return
            relayed = {k: v for k, v in progress.items() if k != "progressToken"}
            await request.connection.notify(
                "notifications/progress", {"progressToken": request.progress_token, **relayed}
            )

        return await call.tool.provider.connection.request(
            "tools/call",
            call.params,
            timeout=self.calls.config.call_timeout,
            on_progress=relay if request.progress_token is not None else None,
        )


def _answer(answer: Reply, result: Any) -> None:
    if not answer.done():  # else cancelled meanwhile: the caller left or gave up
        answer.set_result(result)


def _fail(answer: Reply, error: Exception) -> None:
    if not answer.done():
        answer.set_exception(error)
