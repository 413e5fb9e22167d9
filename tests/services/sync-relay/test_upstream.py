"""The upstream link: a device relay linking a shared session to a second ``kiki-sync-relay``
standing in for the edge (same protocol, and it trusts the device's key as the edge does)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from pycrdt import Map

from kikitest.sync_fixtures import DeviceRelay, YClient, eventually

pytestmark = pytest.mark.integration

SHARED = "kitchen"


@pytest.fixture
def linked(tmp_path: Path) -> Iterator[tuple[DeviceRelay, DeviceRelay]]:
    (tmp_path / "device").mkdir()
    (tmp_path / "edge").mkdir()
    device = DeviceRelay(tmp_path / "device")
    edge = DeviceRelay(tmp_path / "edge", trusted_keys=json.dumps([device.key.public_jwk()]))
    device.env.update(
        KIKI_SYNC_RELAY_UPSTREAM=f"ws://127.0.0.1:{edge.port}",
        KIKI_SYNC_RELAY_UPSTREAM_SESSIONS=f"{SHARED},other",
        KIKI_SYNC_RELAY_UPSTREAM_BACKOFF_MAX="1",
    )
    try:
        edge.start()
        device.start()
        yield device, edge
    finally:
        device.close()
        edge.close()


async def join(relay: DeviceRelay, role: str = "controller") -> YClient:
    return await YClient.join(relay.url(SHARED, relay.token(SHARED, role)))


async def linked_state(device: DeviceRelay) -> bool:
    link = (await device.show(SHARED))["upstream"]
    return bool(link["linked"])


@pytest.mark.parametrize("kill", [False, True], ids=["stopped", "killed"])
async def test_a_shared_session_syncs_both_ways_and_converges_after_a_partition(
    linked: tuple[DeviceRelay, DeviceRelay], kill: bool
) -> None:
    device, edge = linked
    local, remote = await join(device), await join(edge)
    owner = await join(device, "device")
    local.map["from-device"] = 1
    remote.map["from-edge"] = 1
    owner.doc.get("device", type=Map)["screen"] = "home"  # the device's part goes up as device
    await eventually(lambda: local.state() == remote.state() and len(remote.map) == 2)
    await eventually(lambda: remote.doc.get("device", type=Map).get("screen") == "home")
    assert await linked_state(device)

    await asyncio.to_thread(edge.stop, kill=kill)
    await remote.closed()
    # The device serves its local clients meanwhile.
    local.map["while-apart"] = 1
    late = await join(device, "observer")
    await eventually(lambda: late.map.get("while-apart") == 1)
    remote.map["offline-at-edge"] = 1
    await until(lambda: _link_down(device))  # the link notices and says so

    await asyncio.to_thread(edge.start)
    await remote.connect(edge.url(SHARED, edge.token(SHARED, "controller")))
    # Both documents converge: what each side wrote apart reaches the other.
    await eventually(lambda: local.state() == remote.state() and len(local.map) == 4)
    await eventually(lambda: late.map.get("offline-at-edge") == 1)
    assert await linked_state(device)
    for client in (local, remote, owner, late):
        await client.close()


async def test_the_link_is_a_device_peer_at_the_upstream(
    linked: tuple[DeviceRelay, DeviceRelay],
) -> None:
    device, edge = linked
    remote = await join(edge)
    await eventually(lambda: remote.open)
    shown = await edge.show(SHARED)
    await until(lambda: _has_device_peer(edge))
    assert any(c["role"] == "controller" for c in shown["clients"])
    # A controller at the edge cannot write the device's part, there or through the link.
    remote.doc.get("device", type=Map)["screen"] = "forged"
    assert await remote.closed() == 1008
    check = await join(device, "observer")
    assert "screen" not in check.doc.get("device", type=Map)
    await check.close()


async def _has_device_peer(edge: DeviceRelay) -> bool:
    shown = await edge.show(SHARED)
    return any(c["role"] == "device" and c["sub"].startswith("device:") for c in shown["clients"])


async def _link_down(device: DeviceRelay) -> bool:
    return not await linked_state(device)


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    """Wait until ``check()`` holds; polled, as it asks a process."""
    async with asyncio.timeout(15):
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
