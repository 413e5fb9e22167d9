"""The sync conformance suite against the edge Worker's Session objects under ``workerd``.

Every check of :data:`kikitest.sync_conformance.CHECKS` (pycrdt clients, and the npm
``y-websocket`` clients of tests/kikitest/node) runs against one ``workerd serve`` of the edge.
Needs ``node`` and ``scripts/install-node-deps``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kikitest.edge_fixtures import EdgeServer, edge_server
from kikitest.sync_conformance import CHECKS, Check
from kikitest.sync_fixtures import NODE_DIR, NodePeers

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def edge() -> Iterator[EdgeServer]:
    with edge_server() as server:
        yield server


@pytest.fixture(scope="module")
def node_peers() -> Iterator[NodePeers]:
    if not (NODE_DIR / "node_modules" / "y-websocket").is_dir():
        pytest.fail("the Node clients are not installed: run scripts/install-node-deps")
    peers = NodePeers()
    yield peers
    peers.close()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
async def test_edge_conforms(edge: EdgeServer, node_peers: NodePeers, check: Check) -> None:
    await check(edge, node_peers)
