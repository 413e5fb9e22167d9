"""One bounded event queue per stream, for the notify and portal streams.

Their events are not coalesced (each is news, unlike a player's state): a stream holds up to
``max_events`` for a slow broker, then drops the oldest, counting each drop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Callable
from typing import Any

Event = dict[str, Any]


async def bounded_events(
    listeners: list[Callable[[Event], None]],
    max_events: int,
    dropped: Callable[[], None],
    accept: Callable[[Event], bool] = lambda event: True,
) -> AsyncGenerator[Event, None]:
    """The events told to ``listeners`` from now on that ``accept`` takes, oldest first; the
    listener is removed when the stream ends."""
    wake = asyncio.Event()
    queue: deque[Event] = deque(maxlen=max_events)

    def listener(event: Event) -> None:
        if not accept(event):
            return
        if len(queue) == queue.maxlen:
            dropped()
        queue.append(event)
        wake.set()

    listeners.append(listener)
    try:
        while True:
            await wake.wait()
            wake.clear()
            while queue:
                yield queue.popleft()
    finally:
        listeners.remove(listener)
