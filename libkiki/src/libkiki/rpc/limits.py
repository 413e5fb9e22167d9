"""Bounding outgoing requests: a waiting room rather than a refusal."""

from __future__ import annotations

import asyncio
from collections import deque

from libkiki.errors import LimitExceeded

__all__ = ["Slots"]


class Slots:
    """A FIFO counting semaphore that can take several units at once (a batch)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def try_acquire(self, n: int) -> bool:
        """Take ``n`` units now if they are free and nobody waits ahead; never wait."""
        if not self._waiters and self.used + n <= self.size:
            self.used += n
            return True
        return False

    async def acquire(self, n: int) -> None:
        if n > self.size:
            raise LimitExceeded(f"a batch of {n} requests exceeds the in-flight limit {self.size}")
        if self.try_acquire(n):
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((n, fut))
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release(n)  # granted, but our caller is gone
            else:
                self._waiters.remove((n, fut))
                self._wake()
            raise

    def release(self, n: int) -> None:
        self.used -= n
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used + self._waiters[0][0] <= self.size:
            n, fut = self._waiters.popleft()
            self.used += n
            fut.set_result(None)
