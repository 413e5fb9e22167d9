"""The notify and portal streams' bounded queue: events in order, the oldest dropped (and
counted) past the bound, only those the stream takes, its listener gone when it ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from kiki_dbus_gateway.event_queue import bounded_events

pytestmark = pytest.mark.unit


async def test_a_slow_reader_loses_the_oldest_and_they_are_counted() -> None:
    listeners: list[Callable[[dict[str, Any]], None]] = []
    drops: list[int] = []
    events = bounded_events(listeners, 2, lambda: drops.append(1), lambda e: e["n"] != 99)
    async with contextlib.aclosing(events):
        first = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0)  # the generator started: its listener is registered
        for n in (1, 99, 2, 3):
            for listener in list(listeners):
                listener({"n": n})
        assert [await first, await anext(events)] == [{"n": 2}, {"n": 3}]
        assert drops == [1]
    assert listeners == []
