"""libkiki's streams end to end through the real broker (issue 18): a ``ToolProvider``'s
generator, fanned out by the broker to ``ToolClient`` subscribers."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kikitest import until
from kikitest.broker_lexicons import TICKS, TICKS_LEXICON
from libkiki.backoff import RestartBackoff
from libkiki.tools import (
    Ended,
    Event,
    Status,
    StreamContext,
    Subscription,
    ToolClient,
    ToolProvider,
)

pytestmark = pytest.mark.integration

Broker = tuple[Path, subprocess.Popen[bytes]]


@dataclass
class Ticker:
    """A provider of TICKS whose generator yields what the test puts in ``feed``."""

    path: Path
    feed: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)
    opened: list[dict[str, Any]] = field(default_factory=list)
    closed: int = 0

    def provider(self) -> ToolProvider:
        provider = ToolProvider(self.path, lexicons=[TICKS_LEXICON])

        @provider.subscription(TICKS)
        async def ticks(
            params: dict[str, Any], stream: StreamContext
        ) -> AsyncIterator[dict[str, Any]]:
            self.opened.append(params)
            try:
                while (message := await self.feed.get()) is not None:
                    yield message
            finally:
                self.closed += 1

        return provider


@dataclass(slots=True)
class Counting(RestartBackoff):
    """libkiki's back-off, counting the registrations it is told of."""

    registrations: int = 0

    def ready(self, now: float) -> None:
        RestartBackoff.ready(self, now)
        self.registrations += 1


async def upto(stream: Subscription[Any], events: int) -> list[Any]:
    """The items of ``stream`` up to its ``events``-th event."""
    items: list[Any] = []
    async with asyncio.timeout(20):
        while sum(isinstance(i, Event) for i in items) < events:
            items.append(await anext(stream))
    return items


LIVE = Status("live", None, 0)


async def test_one_generator_feeds_two_subscribers(broker: Broker) -> None:
    path, _ = broker
    ticker = Ticker(path)
    provider = ticker.provider()
    async with provider.connect(), ToolClient(path) as a, ToolClient(path) as b:
        async with a.subscribe(TICKS, room="x") as one, b.subscribe(TICKS, room="x") as two:
            await until(lambda: ticker.opened, "the upstream opened")
            for n in range(3):
                ticker.feed.put_nowait({"n": n})
            expected = [Event(n + 1, {"n": n}) for n in range(3)]
            # The first subscriber came while the upstream was opening: told when it is live.
            assert await upto(one, 3) == [LIVE, *expected]
            assert [i for i in await upto(two, 3) if i != LIVE] == expected
            assert ticker.opened == [{"room": "x"}]  # one upstream for both
        # The last subscriber left: the broker closed the upstream, the generator was cancelled.
        await until(lambda: ticker.closed == 1, "the generator closed")
        await until(lambda: provider.streams.running == 0, "the generator's task ended")


async def test_a_generator_that_ends_ends_every_subscriber(broker: Broker) -> None:
    path, _ = broker
    ticker = Ticker(path)
    async with ticker.provider().connect(), ToolClient(path) as a, ToolClient(path) as b:
        one, two = a.subscribe(TICKS), b.subscribe(TICKS)
        async with one, two:
            await until(lambda: ticker.opened, "the upstream opened")
            ticker.feed.put_nowait({"n": 7})
            ticker.feed.put_nowait(None)
            for stream in (one, two):
                async with asyncio.timeout(20):
                    events = [i async for i in stream if isinstance(i, Event)]
                assert events == [Event(1, {"n": 7})]
                assert stream.ended == Ended("providerEnded")


async def test_a_message_breaking_its_lexicon_is_rejected_and_counted(broker: Broker) -> None:
    path, _ = broker
    ticker = Ticker(path)
    provider = ticker.provider()
    async with provider.connect(), ToolClient(path) as client:
        stream = client.subscribe(TICKS)
        async with stream:
            await until(lambda: ticker.opened, "the upstream opened")
            ticker.feed.put_nowait({"n": -1})
            ticker.feed.put_nowait({"n": 1})
            async with asyncio.timeout(20):
                first = await anext(m async for m in stream.messages())
            assert first == {"n": 1}
            await until(lambda: provider.streams.rejected[TICKS] == 1, "the rejection")


async def test_a_provider_coming_back_resumes_its_subscribers(broker: Broker) -> None:
    path, _ = broker
    ticker = Ticker(path)
    backoff = Counting(initial=0.01, maximum=0.05)
    task = asyncio.create_task(ticker.provider().keep_registered(backoff))
    try:
        # The lexicon is the provider's own: the broker knows the stream once it registered.
        await until(lambda: backoff.registrations == 1, "the registration")
        async with ToolClient(path) as client, client.subscribe(TICKS) as stream:
            await until(lambda: ticker.opened, "the upstream opened")
            ticker.feed.put_nowait({"n": 1})
            assert await upto(stream, 1) == [LIVE, Event(1, {"n": 1})]
            task.cancel()  # the provider goes away...
            with pytest.raises(asyncio.CancelledError):
                await task
            async with asyncio.timeout(20):
                waiting = await anext(stream)
            assert isinstance(waiting, Status)
            assert (waiting.state, waiting.reason) == ("waiting", "providerGone")
            assert stream.state == "waiting"
            # ... and comes back: the broker opens the upstream again, nothing asked of us.
            task = asyncio.create_task(ticker.provider().keep_registered(backoff))
            await until(lambda: len(ticker.opened) == 2, "the upstream opened again")
            ticker.feed.put_nowait({"n": 2})
            assert await upto(stream, 1) == [LIVE, Event(2, {"n": 2})]
            assert stream.state == "live"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
