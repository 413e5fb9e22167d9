"""The parts of our requests that need no peer: a request's Deadline (its own cancellation told
from any other) and the Progress queue (callbacks in order, bounded, before the result)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from libkiki.rpc.calling import Deadline
from libkiki.rpc.progress import PROGRESS_QUEUE, Progress

pytestmark = pytest.mark.unit

BOUND = 5.0


async def test_a_deadline_that_expires_cancels_its_task_and_says_so() -> None:
    loop = asyncio.get_running_loop()
    deadline = Deadline(loop, 0.0)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(BOUND)
    assert deadline.expired
    assert deadline.caused_cancellation()
    assert not deadline.caused_cancellation()  # told once
    deadline.end()
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0  # uncancelled: the task goes on


async def test_another_cancellation_is_not_the_deadlines() -> None:
    loop = asyncio.get_running_loop()

    async def request() -> bool:
        deadline = Deadline(loop, BOUND)
        try:
            await asyncio.sleep(BOUND)
        except asyncio.CancelledError:
            return deadline.caused_cancellation()
        finally:
            deadline.end()
        return True

    task = loop.create_task(request())
    await asyncio.sleep(0)
    task.cancel()
    assert await task is False


async def test_a_deadline_and_another_cancellation_together_stay_a_cancellation() -> None:
    loop = asyncio.get_running_loop()
    outcome: list[bool] = []

    async def request() -> None:
        deadline = Deadline(loop, 0.0)
        # Someone else cancels the task in the same turn of the loop as the deadline fires: the
        # task sees one CancelledError for both.
        me = asyncio.current_task()
        assert me is not None
        loop.call_soon(me.cancel)
        try:
            await asyncio.sleep(BOUND)
        except asyncio.CancelledError:
            assert deadline.expired  # both cancellations are in
            outcome.append(deadline.caused_cancellation())
            raise
        finally:
            deadline.end()

    task = loop.create_task(request())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert outcome == [False]


def test_a_deadline_needs_a_task_only_with_a_limit() -> None:
    loop = asyncio.new_event_loop()
    try:
        Deadline(loop, None).end()  # no limit: nothing to cancel
        with pytest.raises(RuntimeError, match="inside a task"):
            Deadline(loop, 1.0)
    finally:
        loop.close()


async def test_progress_callbacks_run_in_order_before_done_returns() -> None:
    progress = Progress(asyncio.get_running_loop(), "t")
    seen: list[Any] = []

    async def slow(params: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        seen.append(params["n"])

    for n in range(3):
        progress.queue(1, slow, {"n": n})
    assert progress.queued(1)
    assert not progress.queued(2)
    async with asyncio.timeout(BOUND):
        await progress.done(1)
    assert seen == [0, 1, 2]
    progress.forget(1)
    assert not progress.queued(1)
    progress.stop()


async def test_progress_past_the_bound_is_dropped_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    progress = Progress(asyncio.get_running_loop(), "t")
    seen: list[Any] = []

    async def record(params: dict[str, Any]) -> None:
        seen.append(params["n"])

    with caplog.at_level(logging.WARNING):
        for n in range(PROGRESS_QUEUE + 5):  # the task has not run yet: nothing is taken
            progress.queue(1, record, {"n": n})
    assert "progress callbacks are behind" in caplog.text
    async with asyncio.timeout(BOUND):
        await progress.done(1)
    assert seen == list(range(PROGRESS_QUEUE))
    progress.stop()


async def test_closed_progress_drops_callbacks_and_releases_waiters() -> None:
    progress = Progress(asyncio.get_running_loop(), "t")
    seen: list[Any] = []
    gate = asyncio.Event()

    async def blocked(params: dict[str, Any]) -> None:
        await gate.wait()
        seen.append(params["n"])

    progress.queue(1, blocked, {"n": 0})
    progress.queue(1, blocked, {"n": 1})
    waiter = asyncio.ensure_future(progress.done(1))
    await asyncio.sleep(0)
    progress.closed = True
    progress.stop()
    progress.drop_queued()  # the marker behind them is released: done() returns
    async with asyncio.timeout(BOUND):
        await waiter
    progress.queue(2, blocked, {"n": 2})  # closed: dropped
    assert not progress.queued(2)
    assert seen == []
