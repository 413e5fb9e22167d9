"""``SessionClient`` at the edge: the edge Worker under ``workerd``, a device relay whose session
is linked up to it and served by its device link, a real tool broker and a provider of
``dev.kiki.demo.echo`` in this process. A client of the edge sees the device and its calls are
carried out on the device. Needs ``node`` and the edge's npm packages."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kikitest.edge_fixtures import EdgeServer, edge_server
from kikitest.sync_fixtures import DeviceRelay, eventually
from libkiki.errors import NotFound
from libkiki.session import SessionClient
from libkiki.tools import ToolCall, ToolProvider

pytestmark = pytest.mark.interop

SESSION = "remote"
ECHO = "dev.kiki.demo.echo"


@pytest.fixture
async def edge(sockdir: Path, spawn_service: Any) -> AsyncIterator[EdgeServer]:
    etc = sockdir / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "tool-policy.toml").write_text(
        f'[[delegate]]\nprincipals = ["uid:{os.getuid()}"]\n\n'
        '[[allow]]\nprincipals = ["remote:*"]\ntools = ["dev.kiki.demo.*"]\n'
    )
    broker, notes = spawn_service("tool-broker")
    notes.wait_for("READY")
    (sockdir / "relay").mkdir()
    relay = DeviceRelay(sockdir / "relay", link_sessions=SESSION, upstream_sessions=SESSION)
    relay.env.update(KIKI_RUNTIME_DIR=str(sockdir), KIKI_CONFIG_DIR=str(etc))
    provider = ToolProvider(sockdir / "tools.sock")

    @provider.tool(ECHO)
    async def echo(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        return {"text": args["text"], "caller": call.caller}

    with edge_server(relay.key) as server:
        relay.env["KIKI_SYNC_RELAY_UPSTREAM"] = f"ws://127.0.0.1:{server.port}"
        async with provider.connect(), asyncio.TaskGroup() as tg:
            serving = tg.create_task(provider.serve_forever())
            await asyncio.to_thread(relay.start)
            try:
                yield server
            finally:
                serving.cancel()
                await asyncio.to_thread(relay.close)
                broker.send_signal(signal.SIGTERM)
                await asyncio.to_thread(broker.wait, 30)


def relay_logs(workdir: Path) -> str:
    """The relay's own logs, for a failure's message: what its link and upstream link said."""
    return "\n".join(p.read_text(errors="replace")[-4000:] for p in sorted(workdir.glob("*.log")))


async def test_a_client_of_the_edge_drives_the_device(edge: EdgeServer, sockdir: Path) -> None:
    url = edge.url(SESSION, edge.token(SESSION, "controller", sub="alice"))
    async with SessionClient(url) as remote:
        try:
            await eventually(lambda: ECHO in (remote.state().get("tools") or []), within=60)
        except TimeoutError:
            state = remote.state()
            pytest.fail(
                f"the device's tools never reached the edge: {state!r}\n"
                f"{relay_logs(sockdir / 'relay')}"
            )
        assert (await remote.call(ECHO, {"text": "far"}, timeout=30))["text"] == "far"
        with pytest.raises(NotFound):
            await remote.call("dev.kiki.demo.nothing", {}, timeout=30)
    # The token apart from the URL, as the dashboard sends it.
    token = edge.token(SESSION, "controller", sub="bob")
    async with SessionClient(edge.url(SESSION, None), token) as remote:
        assert (await remote.call(ECHO, {"text": "again"}, timeout=30))["text"] == "again"
