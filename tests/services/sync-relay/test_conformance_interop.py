"""The sync conformance suite's checks with Node ``y-websocket`` clients, against a real relay.

Needs ``node`` and ``scripts/install-node-deps`` (``npm ci`` in tests/kikitest/node).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kikitest.sync_conformance import NODE_CHECKS, Check
from kikitest.sync_fixtures import NODE_DIR, DeviceRelay, NodePeers

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceRelay]:
    relay = DeviceRelay(Path(tmp_path_factory.mktemp("relay")))
    relay.start()
    yield relay
    relay.close()


@pytest.fixture(scope="session")
def node_peers() -> Iterator[NodePeers]:
    if not (NODE_DIR / "node_modules" / "y-websocket").is_dir():
        pytest.fail("the Node clients are not installed: run scripts/install-node-deps")
    peers = NodePeers()
    yield peers
    peers.close()


@pytest.mark.parametrize("check", NODE_CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
async def test_device_relay_conforms_with_node_clients(
    device: DeviceRelay, node_peers: NodePeers, check: Check
) -> None:
    await check(device, node_peers)
