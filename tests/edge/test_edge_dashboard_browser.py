"""The dashboard served by the edge, in a real browser (Debian's chromium under playwright-core,
tests/kikitest/node/browser.py): opened from the Worker under ``workerd``, it joins the
session's object on the same origin with the token of its URL's fragment, shows what a
stand-in device (a ``device``-role client of the object) writes, and a press on it becomes an
intent the object accepts and the device answers; an observer's crafted intent is refused by
the object. Screenshots go to ``$KIKI_TEST_ARTIFACTS/dashboard`` (else the test's tmp_path).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Map

from kikitest.edge_fixtures import EdgeServer, edge_server
from kikitest.node.browser import Browser, artefacts, chromium
from kikitest.sync_fixtures import YClient, eventually

pytestmark = pytest.mark.interop

SESSION = "porch"


@pytest.fixture(scope="module")
def edge() -> Iterator[EdgeServer]:
    with edge_server() as server:
        yield server


@pytest.fixture
def browser() -> Iterator[Browser]:
    chromium()
    b = Browser()
    try:
        yield b
    finally:
        b.close()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _node(i: int, role: str, name: str, **more: Any) -> dict[str, Any]:
    return {"ref": f"1:{i}", "id": i, "treeId": 1, "role": role, "name": name,
            "parent": None if i == 1 else 1, "depth": 0 if i == 1 else 1, "states": [],
            "actions": [], **more}  # fmt: skip


@contextlib.asynccontextmanager
async def stand_in_device(edge: EdgeServer) -> AsyncIterator[list[dict[str, Any]]]:
    """A device client at the edge: a window with a Bell button on its screen; each intent
    without a result is answered ``ok`` (the intents it saw, yielded)."""
    client = await YClient.join(edge.url(SESSION, edge.token(SESSION, "device")))
    device = client.doc.get("device", type=Map)
    intents = client.doc.get("intents", type=Map)
    results = client.doc.get("results", type=Map)
    with client.doc.transaction():
        device["updatedAt"] = _now()
        device["stale"] = []
        device["tools"] = ["dev.kiki.a11y.act"]
        nodes = [_node(1, "window", "Porch"), _node(2, "button", "Bell", actions=["press"])]
        device["screen"] = {"apps": [{"appId": "dev.kiki.demo", "treeId": 1, "revision": 1,
                                      "nodes": nodes}]}  # fmt: skip
    seen: list[dict[str, Any]] = []

    async def answer() -> None:
        while True:
            for key, intent in list(intents.items()):
                if key not in results:
                    seen.append(intent)
                    results[key] = {"status": "ok", "at": _now(), "output": {"message": "rang"}}
            await asyncio.sleep(0.02)

    task = asyncio.create_task(answer())
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()


def page_url(edge: EdgeServer, role: str, sub: str) -> str:
    token = edge.token(SESSION, role, sub=sub)
    return f"http://127.0.0.1:{edge.port}/dashboard/#session={SESSION}&token={token}"


def test_the_edge_dashboard_acts_on_the_device(
    edge: EdgeServer, browser: Browser, tmp_path: Path
) -> None:
    shots = artefacts(tmp_path)

    async def go() -> None:
        await browser.call("launch", executable=chromium())
        async with stand_in_device(edge) as seen:
            await browser.call("open", page="alice", url=page_url(edge, "controller", "alice"))
            await browser.call("open", page="olga", url=page_url(edge, "observer", "olga"))
            for page in ("alice", "olga"):
                await browser.call("waitText", page=page, selector="#connection", text="Live")
                await browser.call("waitText", page=page, selector="#screen", text="Bell")
            await browser.call("click", page="alice", role="button", name="Bell")
            await browser.call("waitText", page="alice", selector="#activity", text="rang")
            await browser.call("waitText", page="olga", selector="#activity", text="rang")
            assert [(i["by"], i["tool"]) for i in seen] == [("alice", "dev.kiki.a11y.act")]
            assert await browser.call("controls", page="olga", role="button", name="Bell") == [True]
            path = shots / "edge-controller.png"
            await browser.call("screenshot", page="alice", path=str(path))
            print(f"screenshot: {path}")
            # An intent crafted in the observer's page: the object closes it (1008).
            await browser.call(
                "evaluate",
                page="olga",
                expression="kikiDashboard.doc.getMap('intents').set('crafted', {id: 'crafted', "
                "tool: 'dev.kiki.a11y.act', input: {ref: '1:2', action: 'press'}, by: 'olga', "
                "createdAt: new Date().toISOString()})",
            )
            await browser.call(
                "waitText", page="olga", selector="#connection", text="PermissionDenied"
            )
            await browser.call("click", page="alice", role="button", name="Bell")
            await eventually(lambda: len(seen) == 2)
            assert "crafted" not in [i["id"] for i in seen]
        assert browser.errors() == []

    asyncio.run(go())
