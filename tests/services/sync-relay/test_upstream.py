"""The upstream link: a device relay linking a shared session to a second ``kiki-sync-relay``
standing in for the edge (same protocol, and it trusts the device's key as the edge does)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pycrdt import Map

from kikitest.sync_fixtures import DeviceRelay, YClient, partition_and_heal, until

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


@pytest.mark.parametrize("kill", [False, True], ids=["stopped", "killed"])
async def test_a_shared_session_syncs_both_ways_and_converges_after_a_partition(
    linked: tuple[DeviceRelay, DeviceRelay], kill: bool
) -> None:
    device, edge = linked
    await partition_and_heal(device, edge, SHARED, kill=kill)


async def test_the_link_is_a_device_peer_at_the_upstream(
    linked: tuple[DeviceRelay, DeviceRelay],
) -> None:
    device, edge = linked
    remote = await YClient.join(edge.url(SHARED, edge.token(SHARED, "controller")))
    shown = await edge.show(SHARED)
    await until(lambda: _has_device_peer(edge))
    assert any(c["role"] == "controller" for c in shown["clients"])
    # A controller at the edge cannot write the device's part, there or through the link.
    remote.doc.get("device", type=Map)["screen"] = "forged"
    assert await remote.closed() == 1008
    check = await YClient.join(device.url(SHARED, device.token(SHARED, "observer")))
    assert "screen" not in check.doc.get("device", type=Map)
    await check.close()


async def _has_device_peer(edge: DeviceRelay) -> bool:
    shown = await edge.show(SHARED)
    return any(c["role"] == "device" and c["sub"].startswith("device:") for c in shown["clients"])
