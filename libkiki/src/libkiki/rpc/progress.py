"""MCP progress callbacks of our requests, run in order in one task per connection.

The queue is bounded: past the bound a progress notification is dropped (it is advisory) and
logged. A request returns only after the callbacks queued for it have run (:meth:`Progress.done`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["PROGRESS_QUEUE", "Progress", "ProgressCallback"]

log = logging.getLogger(__name__)

ProgressCallback = Callable[[dict[str, Any]], Awaitable[None]]
# A callback and its params, or None and a marker future (see Progress.done).
_Item = tuple[ProgressCallback, dict[str, Any]] | tuple[None, asyncio.Future[None]]

PROGRESS_QUEUE = 256  # progress notifications waiting for their callback


class Progress:
    """The progress callbacks of one connection's requests (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str) -> None:
        self._loop = loop
        self._name = name
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(PROGRESS_QUEUE)
        self._queued: set[int] = set()  # requests with progress queued, for done()
        self.task: asyncio.Task[None] | None = None
        self.closed = False

    def queue(self, rid: int, callback: ProgressCallback, params: dict[str, Any]) -> None:
        """Have ``callback(params)`` run, after those queued before it (unless closed, or the
        queue is full: then it is dropped)."""
        if self.closed:
            return
        try:
            self._queue.put_nowait((callback, params))
        except asyncio.QueueFull:
            log.warning("%s: progress callbacks are behind; dropped one", self._name)
            return
        self._queued.add(rid)
        if self.task is None:
            self.task = self._loop.create_task(self._run(), name=f"rpc-progress {self._name}")

    def queued(self, rid: int) -> bool:
        """Whether a callback was queued for request ``rid``."""
        return rid in self._queued

    def forget(self, rid: int) -> None:
        self._queued.discard(rid)

    async def done(self, rid: int) -> None:
        """Wait until the callbacks queued for ``rid`` have run: the queue is FIFO, so a marker
        put behind them is reached after them. Progress is never reported after the result."""
        if self.closed or self.task is None:
            return  # close() drops what is queued; nothing would reach the marker
        marker: asyncio.Future[None] = self._loop.create_future()
        await self._queue.put((None, marker))
        if not self.closed:  # else close() ran while we waited for room: nobody reads it
            await marker

    def stop(self) -> None:
        """Cancel the task that runs the callbacks."""
        if self.task is not None:
            self.task.cancel()

    def drop_queued(self) -> None:
        """Drop what is queued, releasing the requests that wait on a marker."""
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item[0] is None and not item[1].done():
                item[1].set_result(None)

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            if item[0] is None:
                if not item[1].done():
                    item[1].set_result(None)
                continue
            try:
                await item[0](item[1])
            except Exception:
                log.exception("%s: progress callback failed", self._name)
