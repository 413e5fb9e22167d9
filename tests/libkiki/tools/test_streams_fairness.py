"""Event streams under load, through the real broker: a client with a small in-flight limit
keeps every busy subscription (the broker writes separate lines, not batches), a retry after
a cancelled first ``anext()`` sees the broker's refusal, and an openStream the provider never
answers is closed again."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kikitest.broker_fixtures import RawPeer
from kikitest.broker_lexicons import TICKS, TICKS_LEXICON
from libkiki.errors import InvalidParams
from libkiki.tools import Event, Lost, StreamContext, Subscription, ToolClient, ToolProvider

pytestmark = pytest.mark.integration

Broker = tuple[Path, subprocess.Popen[bytes]]


def fast_provider(path: Path, count: int | None) -> ToolProvider:
    """A provider of TICKS yielding ``count`` messages (or without end) as fast as it can."""
    provider = ToolProvider(path, lexicons=[TICKS_LEXICON])

    @provider.subscription(TICKS)
    async def ticks(params: dict[str, Any], stream: StreamContext) -> AsyncIterator[dict[str, Any]]:
        n = 0
        while count is None or n < count:
            yield {"n": n}
            n += 1
            if n % 50 == 0:
                await asyncio.sleep(0)

    return provider


async def read_to(stream: Subscription[Any], last: int) -> tuple[int, int]:
    """Read ``stream`` up to its event ``last``: (events, lost), checked against the seqs."""
    events = lost = 0
    seen = 0
    async for item in stream:
        if isinstance(item, Lost):
            lost += item.count
            seen += item.count
        elif isinstance(item, Event):
            events += 1
            assert item.seq == seen + 1, (item.seq, seen)
            seen = item.seq
            if item.seq >= last:
                break
    return events, lost


async def test_a_client_with_a_small_in_flight_limit_keeps_five_busy_subscriptions(
    broker: Broker,
) -> None:
    path, _ = broker
    last = 3000
    async with fast_provider(path, last).connect(), ToolClient(path, max_in_flight=8) as client:
        streams = [client.subscribe(TICKS, room=room) for room in "abcde"]
        for stream in streams:
            await stream.open()
        async with asyncio.timeout(60):
            counts = await asyncio.gather(*(read_to(s, last) for s in streams))
        for events, lost in counts:
            assert events + lost == last  # every message either read or counted as lost


async def test_a_retry_after_a_cancelled_first_anext_raises_the_refusal(broker: Broker) -> None:
    path, _ = broker
    async with ToolClient(path) as client:
        stream = client.subscribe("org.example.nothing.here")
        first = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)  # the opening has begun (its request is written) ...
        first.cancel()  # ... and its caller gives up before the broker answers
        with pytest.raises(asyncio.CancelledError):
            await first
        async with asyncio.timeout(20):
            with pytest.raises(InvalidParams):
                await anext(stream)
            with pytest.raises(InvalidParams):  # and again: it stays failed
                await anext(stream)


async def test_an_open_stream_that_times_out_is_closed_at_the_provider(broker: Broker) -> None:
    path, _ = broker  # its provider timeout is 2 s
    async with await RawPeer.open(path) as provider, ToolClient(path) as client:
        await provider.request(
            "kiki/registerTools",
            {"tools": [], "lexicons": [TICKS_LEXICON], "subscriptions": [TICKS]},
        )
        async with client.subscribe(TICKS, room="slow"):
            async with asyncio.timeout(20):
                _rid, method, params = await provider.requests.get()
                assert method == "kiki/openStream"  # never answered
                token = params["stream"]
                notes: list[tuple[str, dict[str, Any]]] = []
                while not any(m == "kiki/closeStream" for m, _ in notes):
                    notes.append(await provider.notes.get())
            assert ("kiki/closeStream", {"stream": token}) in notes
