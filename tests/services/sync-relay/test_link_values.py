"""What the device link writes must be JSON a Yjs document holds: an int past 64 bits (a D-Bus
uint64 such as an MPRIS player's ``mpris:length``, a tool's output) or a non-string key made
pycrdt panic, a ``BaseException`` that stopped the relay. And an intent whose call fails in
any way ends with a result, never ``running`` for good. The relay in-process, its device link
run as the server runs it, a stand-in for the broker at the link's seam (:class:`BrokerLink`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from pycrdt import Doc, Map

from kiki_sync_relay.limits import Limits
from kiki_sync_relay.link import DeviceLink, LinkSettings
from kiki_sync_relay.link.broker import BrokerLink
from kiki_sync_relay.link.intents import STUCK_MARGIN
from kiki_sync_relay.link.session_link import SessionLink
from kiki_sync_relay.link.state import DeviceState
from kiki_sync_relay.link.values import json_safe
from kiki_sync_relay.relay import Relay
from kiki_sync_relay.session import Member
from kiki_sync_relay.store import Store
from kikitest.sync_fixtures import eventually
from libkiki.errors import InvalidParams, Unavailable
from libkiki.sync.tokens import Revocations, SigningKey, Verifier

pytestmark = pytest.mark.integration

SESSION = "home"
TOOL = "dev.kiki.demo.echo"
WAIT = 20.0
HUGE = 2**64 - 1


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[Relay]:
    store = Store(tmp_path / "sessions.sqlite3")
    store.start()
    relay = Relay(
        store, Verifier([SigningKey.generate().public]), Revocations(), Limits(), Counter()
    )
    try:
        yield relay
    finally:
        await relay.close_all()
        await store.stop()


def part(relay: Relay, name: str) -> dict[str, Any]:
    doc: Doc[Any] = Doc()
    doc.apply_update(relay.live[SESSION].session.doc.get_update())
    value: dict[str, Any] = doc.get(name, type=Map).to_py() or {}
    return value


class Broker(BrokerLink):
    """The broker as the link sees it: ready, and answering each call as ``answer`` says."""

    def __init__(self, state: DeviceState, answer: Any) -> None:
        super().__init__(state, None, tools=["*"])
        self.answer = answer
        self.arguments: list[dict[str, Any]] = []

    async def ready(self, within: float) -> bool:
        return True

    async def call(
        self, tool: str, arguments: dict[str, Any], *, key: str, on_behalf_of: Mapping[str, str]
    ) -> Any:
        orjson.dumps(arguments)  # what the broker's client sends, first
        self.arguments.append(arguments)
        return self.answer(arguments)


async def write_intents(relay: Relay, intents: dict[str, Any], by: str = "alice") -> None:
    doc: Doc[Any] = Doc()
    part = doc.get("intents", type=Map)
    for key, intent in intents.items():
        part[key] = intent
    member = Member(role="controller", sub=by)
    live = relay.live[SESSION]
    live.session.join(member)
    await relay.submit(SESSION, live, member, doc.get_update())


def intent(key: str, arguments: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    entry = {"id": key, "tool": TOOL, "input": arguments or {}, "by": "alice", "createdAt": now}
    return {**entry, **fields}


@contextlib.asynccontextmanager
async def linked(relay: Relay, broker: Broker, settings: LinkSettings) -> AsyncIterator[None]:
    broker.state.set("tools", [TOOL])
    link = SessionLink(relay, SESSION, broker.state, broker, settings)
    run = asyncio.create_task(link.run())
    try:
        await eventually(lambda: link.linked, WAIT)
        yield
    finally:
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run


async def test_a_state_value_past_64_bits_does_not_stop_the_relay(
    relay: Relay, tmp_path: Path
) -> None:
    device = DeviceLink(relay, [SESSION], LinkSettings(), broker_socket=tmp_path / "no.sock")
    async with device.running():
        await eventually(lambda: device.links[SESSION].linked, WAIT)
        player = {"player": "evil", "active": True}
        device.state.playback({"nowPlaying": {"player": player, "lengthUs": HUGE}})
        # Read as a browser's JSON.parse reads it: the nearest float.
        await eventually(lambda: bool(part(relay, "device").get("nowPlaying")), WAIT)
        written = part(relay, "device")["nowPlaying"]
        assert written["lengthUs"] == float(HUGE)
        # A value with a key that is not a string is not written; the rest of the state is.
        device.state.set("sensors", [{1: "one"}])
        device.state.set("notifications", [{"summary": "after it"}])
        await eventually(lambda: relay.counters["link_writes_failed"] >= 1, WAIT)
        await eventually(lambda: bool(part(relay, "device").get("notifications")), WAIT)
        assert part(relay, "device").get("sensors") == []
        assert device.links[SESSION].linked


def test_an_int_past_the_largest_double_is_null_as_infinity_is() -> None:
    # float() of it raises OverflowError, which is no InvalidParams: it stopped the write.
    assert json_safe({"a": 2**1024, "b": -(10**400), "c": [2**1023]}) == {
        "a": None,
        "b": None,
        "c": [float(2**1023)],
    }
    with pytest.raises(InvalidParams):
        json_safe({"a": 2**1024}, exact=True)


@pytest.mark.parametrize(
    "output",
    [{"inode": HUGE}, {"size": 2**60}, {"by": {1: "a key that is not a string"}}],
)
async def test_a_tool_output_the_document_cannot_hold_ends_as_an_error(
    relay: Relay, output: Any
) -> None:
    broker = Broker(DeviceState(), lambda _: output)
    async with linked(relay, broker, LinkSettings()):
        await write_intents(relay, {"big": intent("big"), "fine": intent("fine")})
        await eventually(lambda: part(relay, "results").get("big", {}).get("status") == "error")
        error = part(relay, "results")["big"]["error"]
        assert "output cannot be written" in error["message"]
        assert part(relay, "results")["fine"]["status"] == "error"


async def test_a_whole_number_past_2_53_in_an_intent_is_passed_as_a_float(relay: Relay) -> None:
    broker = Broker(DeviceState(), lambda arguments: {"n": arguments["n"]})
    async with linked(relay, broker, LinkSettings()):
        await write_intents(relay, {"big": intent("big", {"n": 1e20})})
        await eventually(lambda: part(relay, "results").get("big", {}).get("status") == "ok")
    assert broker.arguments == [{"n": 1e20}]
    assert type(broker.arguments[0]["n"]) is float


async def test_a_call_that_fails_in_any_way_ends_as_an_error(relay: Relay) -> None:
    def fail(arguments: dict[str, Any]) -> Any:
        if arguments.get("how") == "unavailable":
            raise Unavailable("no broker")
        raise RuntimeError("not a KikiError")

    broker = Broker(DeviceState(), fail)
    async with linked(relay, broker, LinkSettings()):
        await write_intents(
            relay, {"a": intent("a", {"how": "crash"}), "b": intent("b", {"how": "unavailable"})}
        )
        done = ("a", "b")
        await eventually(
            lambda: all(part(relay, "results").get(k, {}).get("status") == "error" for k in done)
        )
    assert "RuntimeError" in part(relay, "results")["a"]["error"]["message"]


async def test_malformed_intents_take_from_the_rate_too(relay: Relay) -> None:
    broker = Broker(DeviceState(), lambda _: {})
    settings = LinkSettings(intent_rate=0.001, intent_burst=2.0)
    async with linked(relay, broker, settings):
        bad = {f"m{i}": intent(f"m{i}", tool=3) for i in range(4)}
        ahead = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        await write_intents(relay, bad)
        await write_intents(relay, {"future": intent("future", by="bob", createdAt=ahead)}, "bob")
        await eventually(lambda: len(part(relay, "results")) == 5)
    results = part(relay, "results")
    names = sorted(results[f"m{i}"]["error"]["name"] for i in range(4))
    assert names == ["InvalidParams", "InvalidParams", "LimitExceeded", "LimitExceeded"]
    assert results["future"]["status"] == "refused"
    assert "ahead of the device's clock" in results["future"]["error"]["message"]
    assert broker.arguments == []


async def test_a_result_left_running_with_no_call_is_answered_error(relay: Relay) -> None:
    """Another device writer (a second link, a restored backup) leaves ``running`` for an id
    this link took already: no call of it will ever answer it, so the pruner does."""
    broker = Broker(DeviceState(), lambda _: {"text": "hi"})
    broker.call_timeout = 0.0  # the entry is stuck once it is older than the margin
    settings = LinkSettings(prune_every=0.05)
    async with linked(relay, broker, settings):
        await write_intents(relay, {"a": intent("a")})
        await eventually(lambda: part(relay, "results").get("a", {}).get("status") == "ok")
        old = (datetime.now(UTC) - timedelta(seconds=STUCK_MARGIN + 1)).isoformat()
        doc: Doc[Any] = Doc()
        doc.apply_update(relay.live[SESSION].session.doc.get_update())
        before = doc.get_state()
        doc.get("results", type=Map)["a"] = {"status": "running", "at": old}
        other = Member(role="device", sub="device:other")
        live = relay.live[SESSION]
        live.session.join(other)
        await relay.submit(SESSION, live, other, doc.get_update(before))
        await eventually(lambda: part(relay, "results").get("a", {}).get("status") == "error")
    error = part(relay, "results")["a"]["error"]
    assert (error["name"], broker.arguments) == ("Timeout", [{}])
