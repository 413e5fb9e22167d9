"""``ToolProvider`` streams as async generators (issue 18) against a scripted broker on a real
Unix socket: declared at registration, opened, emitting, closed, ended, refused, rejected."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pydantic
import pytest

from kikitest import until
from kikitest.stream_peer import PeerConnection, ScriptedBroker
from libkiki.backoff import RestartBackoff
from libkiki.errors import NotFound
from libkiki.tools import StreamContext, ToolProvider

pytestmark = pytest.mark.integration

TICKS = "org.example.ticks"


class TickParams(pydantic.BaseModel):
    start: int = 0


class Tick(pydantic.BaseModel):
    n: int


@dataclass
class Probe:
    """What the generators did, seen from the test."""

    started: list[tuple[int, int]] = field(default_factory=list)
    go: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)


def ticks_provider(path: Path, probe: Probe, *, ticks: int | None = None) -> ToolProvider:
    provider = ToolProvider(path)

    @provider.subscription(TICKS)
    async def ticks_stream(params: TickParams, stream: StreamContext) -> AsyncIterator[Tick]:
        probe.started.append((stream.id, params.start))
        try:
            n = params.start
            while ticks is None or n < params.start + ticks:
                yield Tick(n=n)
                n += 1
                await probe.go.wait()
        finally:
            probe.closed.set()

    @provider.subscription("org.example.broken")
    async def broken(params: dict[str, Any], stream: StreamContext) -> AsyncIterator[Any]:
        if params.get("at") == "start":
            raise NotFound("nothing to stream for that")
        if params.get("at") == "start-plain":
            raise RuntimeError("a bug")
        yield {"ok": 1}
        await probe.go.wait()
        raise NotFound("the thing went away")

    return provider


@pytest.fixture
async def broker(sockdir: Path) -> AsyncIterator[ScriptedBroker]:
    async with ScriptedBroker(sockdir / "tools.sock").serving() as peer:
        yield peer


async def emitted(conn: PeerConnection, stream: int) -> Any:
    message = await conn.expect("kiki/emit")
    assert message["params"]["stream"] == stream
    return message["params"]["message"]


async def test_registration_declares_the_subscriptions(broker: ScriptedBroker) -> None:
    provider = ticks_provider(broker.path, Probe())
    async with provider.connect():
        pass
    (registration,) = broker.registrations
    assert registration["subscriptions"] == ["org.example.broken", TICKS]
    assert registration["tools"] == []


async def test_open_emit_close_runs_the_generator_and_cancels_it(broker: ScriptedBroker) -> None:
    probe = Probe()
    async with ticks_provider(broker.path, probe).connect():
        conn = await broker.connection()
        answer = await conn.request(
            "kiki/openStream", {"stream": 41, "nsid": TICKS, "params": {"start": 5}}
        )
        assert answer["result"] == {}
        assert probe.started == [(41, 5)]
        assert await emitted(conn, 41) == {"n": 5}
        probe.go.set()
        assert await emitted(conn, 41) == {"n": 6}
        assert await emitted(conn, 41) == {"n": 7}
        await conn.notify("kiki/closeStream", {"stream": 41})
        async with asyncio.timeout(10):
            await probe.closed.wait()


async def test_a_generator_that_ends_ends_its_stream(broker: ScriptedBroker) -> None:
    probe = Probe()
    probe.go.set()
    async with ticks_provider(broker.path, probe, ticks=2).connect():
        conn = await broker.connection()
        answer = await conn.request("kiki/openStream", {"stream": 1, "nsid": TICKS})
        assert answer["result"] == {}
        assert [await emitted(conn, 1), await emitted(conn, 1)] == [{"n": 0}, {"n": 1}]
        end = await conn.expect("kiki/endStream")
        assert end["params"] == {"stream": 1}


async def test_a_generator_failing_later_ends_its_stream_with_the_reason(
    broker: ScriptedBroker,
) -> None:
    probe = Probe()
    async with ticks_provider(broker.path, probe).connect():
        conn = await broker.connection()
        answer = await conn.request(
            "kiki/openStream", {"stream": 2, "nsid": "org.example.broken", "params": {}}
        )
        assert answer["result"] == {}
        assert await emitted(conn, 2) == {"ok": 1}
        probe.go.set()
        end = await conn.expect("kiki/endStream")
        assert end["params"] == {"stream": 2, "message": "the thing went away"}


@pytest.mark.parametrize(
    ("nsid", "params", "code"),
    [
        ("org.example.broken", {"at": "start"}, -32004),  # its own typed error
        ("org.example.broken", {"at": "start-plain"}, -32603),  # a bug: no detail
        (TICKS, {"start": "soon"}, -32602),  # params its model refuses
        ("org.example.unknown", {}, -32004),
    ],
)
async def test_a_stream_that_cannot_start_is_refused(
    broker: ScriptedBroker, nsid: str, params: dict[str, Any], code: int
) -> None:
    async with ticks_provider(broker.path, Probe()).connect():
        conn = await broker.connection()
        answer = await conn.request(
            "kiki/openStream", {"stream": 3, "nsid": nsid, "params": params}
        )
        assert answer["error"]["code"] == code
        assert "a bug" not in answer["error"]["message"]
        # Nothing was emitted or ended for it: the next message is this one's.
        await conn.notify("kiki/closeStream", {"stream": 3})
        ping = await conn.request("kiki/openStream", {"stream": 4, "nsid": TICKS})
        assert ping["result"] == {}
        assert await emitted(conn, 4) == {"n": 0}


async def test_rejections_are_counted_and_logged_once(
    broker: ScriptedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    provider = ticks_provider(broker.path, Probe())
    async with provider.connect():
        conn = await broker.connection()
        await conn.request("kiki/openStream", {"stream": 9, "nsid": TICKS})
        await emitted(conn, 9)
        error = {"code": -32602, "message": "n: too large"}
        with caplog.at_level(logging.DEBUG, logger="libkiki.streams_provider"):
            for _ in range(3):
                await conn.notify("kiki/rejected", {"stream": 9, "error": error})
            # The provider handles notifications in order: once it answers this, all were seen.
            await conn.request("kiki/openStream", {"stream": 10, "nsid": "org.example.unknown"})
    assert provider.streams.rejected[TICKS] == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "too large" in warnings[0].getMessage()


async def test_generators_end_with_the_connection_and_registration_declares_them_again(
    broker: ScriptedBroker,
) -> None:
    probe = Probe()
    provider = ticks_provider(broker.path, probe)
    task = asyncio.create_task(provider.keep_registered(RestartBackoff(initial=0.01, maximum=0.05)))
    try:
        conn = await broker.connection()
        await conn.request("kiki/openStream", {"stream": 5, "nsid": TICKS})
        assert await emitted(conn, 5) == {"n": 0}
        await conn.close()  # the broker goes away while the generator waits
        async with asyncio.timeout(10):
            await probe.closed.wait()
        again = await broker.connection()
        await until(lambda: len(broker.registrations) == 2, "the second registration")
        assert broker.registrations[1]["subscriptions"] == ["org.example.broken", TICKS]
        answer = await again.request("kiki/openStream", {"stream": 6, "nsid": TICKS})
        assert answer["result"] == {}
        assert provider.streams.running == 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert provider.streams.running == 0


def test_a_subscription_must_be_an_async_generator() -> None:
    provider = ToolProvider("/nonexistent")

    async def not_a_generator(params: Any, stream: StreamContext) -> Any:
        return None

    with pytest.raises(TypeError, match="async generator"):
        provider.subscription(TICKS)(not_a_generator)  # type: ignore[type-var]


@pytest.mark.parametrize(
    "cancel",
    [
        ("kiki/closeStream", {"stream": 7}),  # its last subscriber left at once
        ("notifications/cancelled", {"requestId": "open-7", "reason": "cancelled"}),
    ],
    ids=["closeStream", "cancelled"],
)
async def test_a_stream_cancelled_as_it_opens_never_emits_and_stops(
    broker: ScriptedBroker, cancel: tuple[str, dict[str, Any]]
) -> None:
    probe = Probe()
    provider = ticks_provider(broker.path, probe)
    async with provider.connect():
        conn = await broker.connection()
        # The openStream and what cancels it come in one write, before any answer.
        opening: dict[str, Any] = {"jsonrpc": "2.0", "id": "open-7", "method": "kiki/openStream"}
        opening["params"] = {"stream": 7, "nsid": TICKS}
        method, params = cancel
        conn.writer.write(
            orjson.dumps(opening)
            + b"\n"
            + orjson.dumps({"jsonrpc": "2.0", "method": method, "params": params})
            + b"\n"
        )
        await conn.writer.drain()
        # A generator that had started is cancelled (its finally ran); none is left running.
        await until(lambda: provider.streams.running == 0, "the stream to stop")
        if probe.started:
            async with asyncio.timeout(10):
                await probe.closed.wait()
        # Nothing of stream 7 was sent: the next stream's first message is the next message.
        probe.go.set()
        answer = await conn.request("kiki/openStream", {"stream": 8, "nsid": TICKS})
        assert answer["result"] == {}
        received = await conn.received.get()  # (answers are not queued here)
        assert received["method"] == "kiki/emit"
        assert received["params"]["stream"] == 8
