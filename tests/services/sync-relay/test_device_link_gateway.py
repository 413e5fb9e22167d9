"""The device link's media and notification parts, from the real D-Bus gateway: an mpv playing
on the bus and dunst showing notifications (the run's shared gateway stack), through the
broker's streams into a session's document."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Map

from kikitest import dbus_fixtures
from kikitest.dbus_fixtures import Dunst, Stack
from kikitest.sync_fixtures import DeviceRelay, YClient, eventually
from libkiki.tools import ToolClient

pytestmark = pytest.mark.interop

# The session's shared peers (kikitest.dbus_fixtures).
gateway_stack = dbus_fixtures.gateway_stack
dunst = dbus_fixtures.dunst
mpv_player = dbus_fixtures.mpv_player

SESSION = "media"
WAIT = 20.0


@pytest.fixture
def relay(sockdir: Path, gateway_stack: Stack) -> Iterator[DeviceRelay]:
    relay = DeviceRelay(
        sockdir, link_sessions=SESSION, broker_socket=str(gateway_stack.tools), link_backoff_max="1"
    )
    relay.start()
    yield relay
    relay.close()


def state(client: YClient) -> dict[str, Any]:
    value: dict[str, Any] = client.doc.get("device", type=Map).to_py() or {}
    return value


async def test_now_playing_and_notifications_reach_the_document(
    relay: DeviceRelay,
    gateway_stack: Stack,
    mpv_player: subprocess.Popen[bytes],
    dunst: Dunst,
) -> None:
    watcher = await YClient.join(relay.url(SESSION, relay.token(SESSION, "observer")))
    try:

        def playing() -> bool:
            now = state(watcher).get("nowPlaying")
            return isinstance(now, dict) and now["player"]["player"] == "mpv"

        await eventually(playing, WAIT)
        await eventually(lambda: "nowPlaying" not in state(watcher)["stale"], WAIT)
        await eventually(lambda: "notifications" not in state(watcher)["stale"], WAIT)
        async with ToolClient(gateway_stack.tools, timeout=10) as tools:
            sent = await tools.call("dev.kiki.notify.notify", {"summary": "from the link test"})
            await tools.call("dev.kiki.notify.close", {"id": sent["id"]})
        await asyncio.to_thread(
            subprocess.run,
            ["notify-send", "--app-name=Mail", "Seen remotely", "you have mail"],
            env=gateway_stack.env,
            timeout=20,
            check=True,
        )

        def told() -> bool:
            events = state(watcher).get("notifications", [])
            closed = any(e.get("id") == sent["id"] and e.get("reason") == "closed" for e in events)
            observed = any(
                e.get("notification", {}).get("summary") == "Seen remotely" for e in events
            )
            return closed and observed

        await eventually(told, WAIT)
        assert all("at" in e for e in state(watcher)["notifications"])
    finally:
        await watcher.close()
