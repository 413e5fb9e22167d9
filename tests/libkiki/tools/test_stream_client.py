"""``ToolClient.subscribe`` (issue 18) against a scripted broker on a real Unix socket:
iteration, unsubscribe, losses, status, every end, a lost connection, typed messages."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pydantic
import pytest

from kikitest import until
from kikitest.stream_peer import Refuse, ScriptedBroker, Then
from libkiki.errors import (
    KikiError,
    PeerGone,
    PermissionDenied,
    ProtocolError,
    SchemaError,
    Unavailable,
)
from libkiki.lexicon.codegen import generate
from libkiki.lexicon.registry import Registry
from libkiki.tools import Ended, Event, Lost, Status, Subscription, ToolClient

pytestmark = pytest.mark.integration

NSID = "org.example.ticks"


@pytest.fixture
async def broker(sockdir: Path) -> AsyncIterator[ScriptedBroker]:
    async with ScriptedBroker(sockdir / "tools.sock").serving() as peer:
        yield peer


def event(sub: int, seq: int, message: Any) -> tuple[str, dict[str, Any]]:
    return "kiki/event", {"subscription": sub, "seq": seq, "message": message}


async def take(stream: Subscription[Any], n: int) -> list[Any]:
    items: list[Any] = []
    async with asyncio.timeout(10):
        while len(items) < n:
            items.append(await anext(stream))
    return items


async def rest(stream: Subscription[Any]) -> list[Any]:
    async with asyncio.timeout(10):
        return [item async for item in stream]


async def test_events_arrive_in_order_and_leaving_unsubscribes(broker: ScriptedBroker) -> None:
    async with ToolClient(broker.path) as tools:
        conn = await broker.connection()
        async with tools.subscribe(NSID, params={"a": 1}, b="two") as stream:
            assert broker.subscribes == [{"nsid": NSID, "params": {"a": 1, "b": "two"}}]
            assert stream.id == 1
            assert stream.state == "live"
            await conn.notify_all(event(1, 1, {"n": 1}), event(1, 2, {"n": 2}))
            await conn.notify(*event(1, 3, {"n": 3}))
            assert await take(stream, 3) == [
                Event(1, {"n": 1}),
                Event(2, {"n": 2}),
                Event(3, {"n": 3}),
            ]
        assert broker.unsubscribes == [1]
        assert stream.ended == Ended("unsubscribed")
        # Events still in flight for it are dropped, and the next subscription is its own.
        async with tools.subscribe(NSID) as second:
            await conn.notify_all(event(1, 4, {"n": 4}), event(2, 1, {"n": 1}))
            assert await take(second, 1) == [Event(1, {"n": 1})]
        assert broker.subscribes[1] == {"nsid": NSID}


async def test_events_written_with_the_answer_are_not_lost(broker: ScriptedBroker) -> None:
    # The subscribe answer and the first events come in one read: the events are routed
    # before the caller of subscribe runs again, and must wait for it.
    broker.handlers["kiki/subscribe"] = lambda params: Then(
        {"subscription": 7, "state": "live"}, event(7, 1, "a"), event(7, 2, "b")
    )
    async with ToolClient(broker.path) as tools, tools.subscribe(NSID) as stream:
        assert await take(stream, 2) == [Event(1, "a"), Event(2, "b")]


async def test_losses_are_told_and_counted(broker: ScriptedBroker) -> None:
    async with ToolClient(broker.path) as tools, tools.subscribe(NSID) as stream:
        conn = await broker.connection()
        await conn.notify_all(
            event(1, 1, "a"), ("kiki/lost", {"subscription": 1, "count": 3}), event(1, 5, "e")
        )
        assert await take(stream, 3) == [Event(1, "a"), Lost(3), Event(5, "e")]
        assert stream.lost == 3


async def test_a_reader_behind_loses_its_oldest_messages_here_too(
    broker: ScriptedBroker,
) -> None:
    broker.handlers["kiki/subscribe"] = lambda params: Then(
        {"subscription": 1, "state": "live"}, *(event(1, n, n) for n in range(1, 6))
    )
    async with ToolClient(broker.path) as tools, tools.subscribe(NSID, max_queue=2) as stream:
        assert await take(stream, 3) == [Lost(3), Event(4, 4), Event(5, 5)]


async def test_status_changes_dropped_with_messages_are_still_told(
    broker: ScriptedBroker,
) -> None:
    def status(state: str, reason: str | None, n: int) -> tuple[str, dict[str, Any]]:
        params = {"subscription": 1, "state": state, "reason": reason, "interruptions": n}
        return "kiki/streamStatus", params

    broker.handlers["kiki/subscribe"] = lambda params: Then(
        {"subscription": 1, "state": "live"},
        event(1, 1, "a"),
        status("waiting", "providerGone", 1),
        status("waiting", "providerGone", 2),
        event(1, 2, "b"),
        event(1, 3, "c"),
    )
    async with ToolClient(broker.path) as tools, tools.subscribe(NSID, max_queue=2) as stream:
        # The oldest went: one message and two cuts of the upstream, told in their place.
        assert await take(stream, 4) == [
            Lost(1),
            Status("waiting", "providerGone", 3),
            Event(2, "b"),
            Event(3, "c"),
        ]
        assert (stream.lost, stream.state) == (1, "waiting")


async def test_a_sequence_gap_nobody_announced_is_a_protocol_error(
    broker: ScriptedBroker,
) -> None:
    async with ToolClient(broker.path) as tools, tools.subscribe(NSID) as stream:
        conn = await broker.connection()
        await conn.notify_all(event(1, 1, "a"), event(1, 3, "c"))
        assert await take(stream, 1) == [Event(1, "a")]
        with pytest.raises(ProtocolError, match="event 3 where 2 was due"):
            await anext(stream)
        assert await rest(stream) == []
    assert broker.unsubscribes == [1]  # the broker still held it: told to let go


async def test_a_subscribe_given_up_is_undone_when_the_broker_says_yes(
    broker: ScriptedBroker,
) -> None:
    broker.handlers["kiki/subscribe"] = None  # answered below, by hand
    async with ToolClient(broker.path) as tools:
        conn = await broker.connection()
        stream = tools.subscribe(NSID)
        entering = asyncio.create_task(stream.__aenter__())
        request = await conn.expect("kiki/subscribe")
        entering.cancel()
        with pytest.raises(asyncio.CancelledError):
            await entering
        await conn.answer(request["id"], {"subscription": 5, "state": "live"})
        await until(lambda: broker.unsubscribes == [5], "the unsubscribe")


async def test_status_changes_are_items_and_the_state_follows(broker: ScriptedBroker) -> None:
    async with ToolClient(broker.path) as tools, tools.subscribe(NSID) as stream:
        conn = await broker.connection()
        waiting = {"state": "waiting", "reason": "providerGone", "interruptions": 1}
        live = {"state": "live", "reason": None, "interruptions": 0}
        await conn.notify_all(
            event(1, 1, "a"),
            ("kiki/streamStatus", {"subscription": 1, **waiting}),
            ("kiki/streamStatus", {"subscription": 1, **live}),
            event(1, 2, "b"),
        )
        items = await take(stream, 2)
        assert items == [Event(1, "a"), Status("waiting", "providerGone", 1)]
        assert stream.state == "waiting"
        assert await take(stream, 2) == [Status("live", None, 0), Event(2, "b")]
        assert stream.state == "live"


async def test_messages_alone_keep_the_rest_in_attributes(broker: ScriptedBroker) -> None:
    async with ToolClient(broker.path) as tools, tools.subscribe(NSID) as stream:
        conn = await broker.connection()
        await conn.notify_all(
            ("kiki/lost", {"subscription": 1, "count": 2}),
            event(1, 3, "c"),
            ("kiki/streamStatus", {"subscription": 1, "state": "waiting", "reason": "x"}),
            ("kiki/ended", {"subscription": 1, "reason": "providerEnded", "message": "bye"}),
        )
        async with asyncio.timeout(10):
            assert [m async for m in stream.messages()] == ["c"]
        assert (stream.lost, stream.state) == (2, "waiting")
        assert stream.ended == Ended("providerEnded", "bye")


@pytest.mark.parametrize(
    ("reason", "error"),
    [
        ("providerEnded", None),
        ("refused", Unavailable),
        ("denied", PermissionDenied),
        ("shutdown", Unavailable),
        ("somethingNew", Unavailable),
    ],
)
async def test_each_end(broker: ScriptedBroker, reason: str, error: type[KikiError] | None) -> None:
    async with ToolClient(broker.path) as tools, tools.subscribe(NSID) as stream:
        conn = await broker.connection()
        await conn.notify_all(
            event(1, 1, "a"),
            ("kiki/ended", {"subscription": 1, "reason": reason, "message": "why"}),
        )
        assert await take(stream, 1) == [Event(1, "a")]
        if error is None:
            assert await rest(stream) == []
        else:
            with pytest.raises(error, match="why") as raised:
                await anext(stream)
            assert type(raised.value) is error
            assert raised.value.data["reason"] == reason
        assert stream.ended == Ended(reason, "why")
        assert await rest(stream) == []  # ended for good
    assert broker.unsubscribes == []  # the broker has forgotten it: nothing to undo


async def test_a_lost_connection_ends_every_subscription_with_peer_gone(
    broker: ScriptedBroker,
) -> None:
    async with ToolClient(broker.path) as tools:
        conn = await broker.connection()
        one, two = tools.subscribe(NSID), tools.subscribe(NSID, x=1)
        async with one, two:
            await conn.notify(*event(1, 1, "a"))
            assert await take(one, 1) == [Event(1, "a")]
            waiting = asyncio.create_task(anext(two))
            await conn.notify(*event(1, 2, "b"))
            await conn.close()
            assert await take(one, 1) == [Event(2, "b")]  # what came before the loss is read
            with pytest.raises(PeerGone):
                await anext(one)
            with pytest.raises(PeerGone):
                async with asyncio.timeout(10):
                    await waiting
            assert one.ended == Ended("connectionLost")
        with pytest.raises(PeerGone):
            await tools.subscribe(NSID).open()


async def test_a_refused_subscribe_raises_its_typed_error(broker: ScriptedBroker) -> None:
    def refuse(params: dict[str, Any]) -> Any:
        raise Refuse(-32003, "no streams for you")

    broker.handlers["kiki/subscribe"] = refuse
    async with ToolClient(broker.path) as tools:
        with pytest.raises(PermissionDenied, match="no streams for you"):
            async with tools.subscribe(NSID):
                pass


class Tick(pydantic.BaseModel):
    n: int


async def test_messages_are_parsed_into_a_binding(broker: ScriptedBroker) -> None:
    bindings = types.ModuleType("bindings")
    bindings.ENDPOINTS = {NSID: {"message": Tick}}  # type: ignore[attr-defined]
    async with ToolClient(broker.path, bindings=[bindings]) as tools:
        conn = await broker.connection()
        found, raw = tools.subscribe(NSID), tools.subscribe("other.nsid")
        given = tools.subscribe(NSID, message_type=dict[str, str])
        async with found, raw, given:
            await conn.notify_all(
                event(1, 1, {"n": 1}),
                event(2, 1, {"n": 1}),
                event(3, 1, {"n": "one"}),
                event(1, 2, {"n": "x"}),
                event(1, 3, {"n": 3}),
            )
            assert await take(found, 1) == [Event(1, Tick(n=1))]
            assert await take(raw, 1) == [Event(1, {"n": 1})]
            assert await take(given, 1) == [Event(1, {"n": "one"})]
            # A message that does not fit is a typed error for that one item only.
            with pytest.raises(SchemaError, match="message 2 does not fit"):
                await anext(found)
            assert await take(found, 1) == [Event(3, Tick(n=3))]


async def test_iterating_without_async_with_subscribes_on_first_use(
    broker: ScriptedBroker,
) -> None:
    async with ToolClient(broker.path) as tools:
        conn = await broker.connection()
        stream = tools.subscribe(NSID)
        assert broker.subscribes == []
        first = asyncio.create_task(anext(stream))
        await until(lambda: broker.subscribes, "the subscribe request")
        await conn.notify(*event(1, 1, "a"))
        async with asyncio.timeout(10):
            assert await first == Event(1, "a")
        await stream.aclose()
        assert broker.unsubscribes == [1]


def generated_bindings(kiki: Registry, tmp_path: Path) -> types.ModuleType:
    """Kiki's own lexicons as ``kiki schema gen`` writes them, imported."""
    path = tmp_path / "kiki_stream_bindings.py"
    path.write_text(
        generate(kiki, ["dev.kiki.tools.subscribeProviders", "dev.kiki.tools.defs"], command="t")
    )
    spec = importlib.util.spec_from_file_location("kiki_stream_bindings", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_a_union_message_is_parsed_by_its_generated_binding(
    broker: ScriptedBroker, kiki: Registry, tmp_path: Path
) -> None:
    bindings = generated_bindings(kiki, tmp_path)
    disconnected = {
        "$type": "dev.kiki.tools.subscribeProviders#disconnected",
        "id": "p1",
        "reason": "closed",
    }
    async with ToolClient(broker.path, bindings=[bindings]) as tools:
        conn = await broker.connection()
        async with tools.subscribe("dev.kiki.tools.subscribeProviders") as stream:
            await conn.notify(*event(1, 1, disconnected))
            (item,) = await take(stream, 1)
    model = bindings.MODELS["dev.kiki.tools.subscribeProviders#disconnected"]
    assert isinstance(item.message, model)
    assert (item.message.id, item.message.reason) == ("p1", "closed")
