"""A session link whose loop ends (a failure, restarted by the device link's guard) inside the
same relay process: the calls it cut short are carried out by its next run, with the same
idempotency key. The relay in-process (its link's member run by hand, so the test ends it
mid-call), the real tool broker, a provider whose tool holds until the test releases it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Doc, Map

from kiki_sync_relay.limits import Limits
from kiki_sync_relay.link import DeviceLink, LinkSettings
from kiki_sync_relay.relay import Relay
from kiki_sync_relay.session import Member
from kiki_sync_relay.store import Store
from kikitest.sync_fixtures import eventually
from libkiki.sync.tokens import Revocations, SigningKey, Verifier
from libkiki.tools import ToolCall, ToolProvider

pytestmark = pytest.mark.integration

SESSION = "home"
ECHO = "dev.kiki.demo.echo"
WAIT = 20.0


@pytest.fixture
async def broker(sockdir: Path, spawn_service: Any) -> AsyncIterator[Path]:
    etc = sockdir / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "tool-policy.toml").write_text(
        f'[[delegate]]\nprincipals = ["uid:{os.getuid()}"]\n\n'
        f'[[allow]]\nprincipals = ["remote:*"]\ntools = ["{ECHO}"]\n'
    )
    proc, notes = spawn_service("tool-broker")
    notes.wait_for("READY")
    yield sockdir / "tools.sock"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def results(relay: Relay) -> dict[str, Any]:
    doc: Doc[Any] = Doc()
    doc.apply_update(relay.live[SESSION].session.doc.get_update())
    value: dict[str, Any] = doc.get("results", type=Map).to_py() or {}
    return value


async def test_calls_cut_short_by_the_links_failure_are_resumed(
    tmp_path: Path, broker: Path
) -> None:
    runs: list[str] = []
    release = asyncio.Event()
    provider = ToolProvider(broker)

    @provider.tool(ECHO)
    async def echo(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        runs.append(args["text"])
        await release.wait()
        return {"text": args["text"], "caller": call.caller}

    store = Store(tmp_path / "sessions.sqlite3")
    store.start()
    relay = Relay(
        store, Verifier([SigningKey.generate().public]), Revocations(), Limits(), Counter()
    )
    device = DeviceLink(relay, [SESSION], LinkSettings(), broker_socket=broker, backoff_max=1.0)
    link = device.links[SESSION]
    tasks = [
        asyncio.create_task(provider.keep_registered()),
        asyncio.create_task(device.broker.run()),
    ]
    run = asyncio.create_task(link.run())
    try:
        await eventually(lambda: ECHO in (device.state.values.get("tools") or []), WAIT)
        await eventually(lambda: link.linked, WAIT)
        # Alice's intent, as a controller's update through the relay.
        key = uuid.uuid4().hex
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        intent = {"id": key, "tool": ECHO, "input": {"text": "hi"}, "by": "alice", "createdAt": now}
        doc: Doc[Any] = Doc()
        doc.get("intents", type=Map)[key] = intent
        alice = Member(role="controller", sub="alice")
        live = relay.live[SESSION]
        live.session.join(alice)
        await relay.submit(SESSION, live, alice, doc.get_update())
        await eventually(lambda: runs == ["hi"], WAIT)
        await eventually(lambda: results(relay).get(key, {}).get("status") == "running", WAIT)
        # The link's loop ends mid-call (what a failure does: its calls are cancelled), and
        # the guard runs it again in the same process.
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
        run = asyncio.create_task(link.run())
        release.set()
        await eventually(lambda: results(relay).get(key, {}).get("status") == "ok", WAIT)
        assert results(relay)[key]["output"]["text"] == "hi"
    finally:
        for task in (run, *tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await relay.close_all()
        await store.stop()
