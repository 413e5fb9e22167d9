"""The sync conformance suite against the edge Worker's Session objects under ``workerd``.

Every check of :data:`kikitest.sync_conformance.CHECKS` (pycrdt clients, and the npm
``y-websocket`` clients of tests/kikitest/node) runs against one ``workerd serve`` of the edge.
Needs ``node`` and ``scripts/install-node-deps``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pycrdt import Doc, Map

from kikitest.edge_fixtures import EdgeServer, edge_server
from kikitest.sync_conformance import CHECKS, Check, intent, new_session
from kikitest.sync_fixtures import NODE_DIR, NodePeers, YClient, eventually

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


async def test_yjs_client_ids_stay_owned_across_a_restart(edge: EdgeServer) -> None:
    """The edge keeps who owns each Yjs client id in the object's storage: after the edge was
    killed and started again, a controller writing under the device's id is still refused."""
    session = new_session("owners")

    def url(role: str, sub: str) -> str:
        return edge.url(session, edge.token(session, role, sub=sub))

    device = await YClient.join(url("device", "device:conf"))
    device.doc.get("device", type=Map)["tools"] = ["t"]
    watcher = await YClient.join(url("observer", "watcher"))
    await eventually(lambda: watcher.doc.get("device", type=Map).to_py() == {"tools": ["t"]})
    await watcher.close()
    await edge.restart(kill=True)
    forger = YClient(Doc(client_id=device.doc.client_id))
    await forger.connect(url("controller", "mallory"))
    forger.doc.get("intents", type=Map)["m1"] = intent("m1", "mallory")
    assert await forger.closed() == 1008
    assert forger.close_reason.startswith("PermissionDenied: Yjs client ")
    await device.close()
