"""The upstream link against the edge itself: a device relay linking a shared session to the
edge Worker's Session object under ``workerd`` (which trusts the device's key), stopped and
killed mid-session. Needs ``node`` and the edge's npm packages (scripts/install-node-deps)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kikitest.edge_fixtures import EdgeServer, edge_server
from kikitest.sync_fixtures import DeviceRelay, partition_and_heal

pytestmark = pytest.mark.interop

SHARED = "kitchen"


@pytest.fixture
def linked(tmp_path: Path) -> Iterator[tuple[DeviceRelay, EdgeServer]]:
    device = DeviceRelay(tmp_path)
    with edge_server(device.key) as edge:
        device.env.update(
            KIKI_SYNC_RELAY_UPSTREAM=f"ws://127.0.0.1:{edge.port}",
            KIKI_SYNC_RELAY_UPSTREAM_SESSIONS=SHARED,
            KIKI_SYNC_RELAY_UPSTREAM_BACKOFF_MAX="1",
        )
        try:
            device.start()
            yield device, edge
        finally:
            device.close()


@pytest.mark.parametrize("kill", [False, True], ids=["stopped", "killed"])
async def test_a_session_shared_with_the_edge_converges_after_a_partition(
    linked: tuple[DeviceRelay, EdgeServer], kill: bool
) -> None:
    device, edge = linked
    await partition_and_heal(device, edge, SHARED, kill=kill)
