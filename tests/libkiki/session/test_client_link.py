"""``SessionClient`` end to end through the device link: a real tool broker (trusting the relay
as a delegate, allowing remote people the demo tools), a provider of ``dev.kiki.demo.echo`` in
this process, and a real ``kiki-sync-relay`` serving the session with its link. Nothing here
plays the device: the relay's link carries the intents out."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kikitest.sync_fixtures import DeviceRelay, eventually
from libkiki.errors import InvalidParams, NotFound, PermissionDenied, Timeout
from libkiki.session import SessionClient
from libkiki.tools import ToolCall, ToolProvider

pytestmark = pytest.mark.integration

SESSION = "remote"
ECHO = "dev.kiki.demo.echo"


@dataclass
class Linked:
    relay: DeviceRelay
    runs: list[str] = field(default_factory=list)

    def url(self, role: str = "controller", sub: str = "alice") -> str:
        return self.relay.url(SESSION, self.relay.token(SESSION, role, sub=sub))


@pytest.fixture
async def linked(sockdir: Path, spawn_service: Any) -> AsyncIterator[Linked]:
    etc = sockdir / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "tool-policy.toml").write_text(
        f'[[delegate]]\nprincipals = ["uid:{os.getuid()}"]\n\n'
        '[[allow]]\nprincipals = ["remote:*"]\ntools = ["dev.kiki.demo.*"]\n'
    )
    broker, notes = spawn_service("tool-broker")
    notes.wait_for("READY")
    relay = DeviceRelay(sockdir / "relay", link_sessions=SESSION)
    relay.env.update(KIKI_RUNTIME_DIR=str(sockdir), KIKI_CONFIG_DIR=str(etc))
    (sockdir / "relay").mkdir()
    here = Linked(relay)
    provider = ToolProvider(sockdir / "tools.sock")

    @provider.tool(ECHO)
    async def echo(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        here.runs.append(args["text"])
        return {"text": args["text"], "caller": call.caller}

    async with provider.connect(), asyncio.TaskGroup() as tg:
        serving = tg.create_task(provider.serve_forever())
        await asyncio.to_thread(relay.start)
        try:
            yield here
        finally:
            serving.cancel()
            await asyncio.to_thread(relay.close)
            broker.send_signal(signal.SIGTERM)
            await asyncio.to_thread(broker.wait, 30)


async def test_a_call_is_carried_out_by_the_device_once(linked: Linked) -> None:
    async with SessionClient(linked.url(sub="alice")) as remote:
        await eventually(lambda: ECHO in (remote.state().get("tools") or []))
        out = await remote.call(ECHO, {"text": "hi"}, timeout=20)
        assert out["text"] == "hi"
        assert linked.runs == ["hi"]
        # The broker recorded the call for the person, not for the relay.
        await eventually(
            lambda: any(c.get("tool") == ECHO for c in remote.state().get("calls", []))
        )
        (call,) = [c for c in remote.state()["calls"] if c["tool"] == ECHO]
        assert call["onBehalfOf"]["subject"] == "alice"
        assert call["outcome"] == "ok"
    # A retry of the same intent (after a reconnection, say) runs nothing again.
    async with SessionClient(linked.url(sub="alice")) as remote:
        first = await remote.call(ECHO, {"text": "once"}, timeout=20, intent_id="same-intent")
    async with SessionClient(linked.url(sub="alice")) as remote:
        again = await remote.call(ECHO, {"text": "once"}, timeout=20, intent_id="same-intent")
    assert first == again
    assert linked.runs == ["hi", "once"]


async def test_what_the_device_refuses_comes_back_typed(linked: Linked) -> None:
    async with SessionClient(linked.url()) as remote:
        with pytest.raises(NotFound):
            await remote.call("dev.kiki.demo.nothing", {}, timeout=20)
        with pytest.raises(InvalidParams):
            await remote.call(ECHO, {"no": "text"}, timeout=20)
        late = datetime.now(UTC) - timedelta(seconds=5)
        with pytest.raises(Timeout, match="past its deadline"):
            await remote.call(ECHO, {"text": "late"}, timeout=20, deadline=late)
    assert linked.runs == []


async def test_an_observer_sees_the_device_and_cannot_act(linked: Linked) -> None:
    async with SessionClient(linked.url("observer", "eve")) as remote:
        await eventually(lambda: ECHO in (remote.state().get("tools") or []))
        with pytest.raises(PermissionDenied):
            await remote.call(ECHO, {"text": "no"}, timeout=5)
    assert linked.runs == []
