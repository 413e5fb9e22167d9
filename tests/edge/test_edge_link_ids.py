"""The relay's link is the ``device`` role at the edge, and each end decides who owns a Yjs
client id apart (the relay's owners are in memory): after a relay restart a controller there
writes under an id a person owns at the edge, and the link carrying it up is not refused (it
was, with 1008, on every reconnect). Needs ``node`` and the edge's npm packages."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Doc, Map

from kikitest.edge_fixtures import EdgeServer, edge_server
from kikitest.sync_conformance import intent
from kikitest.sync_fixtures import DeviceRelay, YClient, eventually, until

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


def intents(client: YClient) -> dict[str, Any]:
    part: Map[Any] = client.doc.get("intents", type=Map)
    return part.to_py() or {}


async def test_the_link_carries_a_write_under_an_id_a_person_owns_at_the_edge(
    linked: tuple[DeviceRelay, EdgeServer],
) -> None:
    device, edge = linked

    async def up() -> bool:
        return bool((await device.show(SHARED))["upstream"]["linked"])

    alice = await YClient.join(edge.url(SHARED, edge.token(SHARED, "controller", sub="alice")))
    intents_of_alice: Map[Any] = alice.doc.get("intents", type=Map)
    intents_of_alice["a1"] = intent("a1", "alice")
    local = await YClient.join(device.url(SHARED, device.token(SHARED, "observer")))
    await eventually(lambda: "a1" in intents(local))
    await local.close()
    # The relay starts again with the document and no owners.
    await asyncio.to_thread(device.stop)
    await asyncio.to_thread(device.start)
    await until(up)
    mallory = YClient(Doc(client_id=alice.doc.client_id))
    await mallory.connect(device.url(SHARED, device.token(SHARED, "controller", sub="mallory")))
    await eventually(lambda: "a1" in intents(mallory))
    written: Map[Any] = mallory.doc.get("intents", type=Map)
    written["m1"] = intent("m1", "mallory")
    watcher = await YClient.join(edge.url(SHARED, edge.token(SHARED, "observer")))
    await eventually(lambda: "m1" in intents(watcher))
    assert await up()
    for client in (alice, mallory, watcher):
        await client.close()
