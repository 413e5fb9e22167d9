"""One search (libkiki.a11y.search, issue 17) behind the a11y-server's ``Query``, its
``dev.kiki.a11y.find`` tool on the real broker and a client's mirror: the same nodes, in the
same order, with the same default limit."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kikitest.a11y_fixtures import R, big_tree
from libkiki.a11y.client import A11yClient, ref
from libkiki.a11y.publisher import A11yPublisher
from libkiki.a11y.search import DEFAULT_LIMIT, MAX_LIMIT
from libkiki.tools import ToolClient

pytestmark = pytest.mark.integration

COUNT = 1500  # more than MAX_LIMIT nodes, every one named "node <i>"


async def test_the_tool_the_query_and_the_mirror_find_the_same_nodes(
    broker: tuple[Path, subprocess.Popen[bytes]],
    a11y_server: Callable[..., tuple[Path, subprocess.Popen[bytes]]],
) -> None:
    tools_path, _ = broker
    path, _ = a11y_server(broker_tools=True)
    async with (
        A11yPublisher(path) as app,
        A11yClient(path) as client,
        ToolClient(tools_path) as tools,
    ):
        await app.publish(big_tree(COUNT), root_id=1)
        await client.subscribe()
        await client.wait_for(lambda m: len(m) == COUNT)
        async with asyncio.timeout(30):
            while "dev.kiki.a11y.find" not in {t["name"] for t in await tools.list()}:  # noqa: ASYNC110
                await asyncio.sleep(0.05)

        async def three_ways(
            name: str | None = None, role: str | None = None, limit: int | None = None
        ) -> list[tuple[list[str], int]]:
            """The tool's, the query's and the mirror's answers; ``limit`` None: none given."""
            args: dict[str, Any] = {k: v for k, v in (("name", name), ("role", role)) if v}
            if limit is None:
                tool = await tools.call("dev.kiki.a11y.find", args)
                nodes, total = await client.query(role=role, name=name or "")
                found, mirror_total = client.mirror.search(role=role, name=name)
            else:
                tool = await tools.call("dev.kiki.a11y.find", {**args, "limit": limit})
                nodes, total = await client.query(role=role, name=name or "", limit=limit)
                found, mirror_total = client.mirror.search(role=role, name=name, limit=limit)
            return [
                ([n["ref"] for n in tool["nodes"]], tool["total"]),
                ([ref(n) for n in nodes], total),
                ([f"{t.tree_id}:{n.id}" for t, n in found], mirror_total),
            ]

        # No limit given: the one default, everywhere (the tool gave 50, a Query 100 and the
        # mirror every match before they shared one search).
        tool = await tools.call("dev.kiki.a11y.find", {"name": "node"})
        queried, _ = await client.query(name="node")
        mirrored = client.mirror.find(name="node")
        assert [len(tool["nodes"]), len(queried), len(mirrored)] == [DEFAULT_LIMIT] * 3
        assert [n["ref"] for n in tool["nodes"]] == [ref(n) for n in queried]
        assert [ref(n) for n in queried] == [ref(n) for n in mirrored]
        everything = await three_ways(name="NODE")
        assert everything[0] == everything[1] == everything[2]
        assert (len(everything[0][0]), everything[0][1]) == (DEFAULT_LIMIT, COUNT)

        buttons = await three_ways(role="button", limit=7)
        assert buttons[0] == buttons[1] == buttons[2]
        assert len(buttons[0][0]) == 7
        assert buttons[0][1] == sum(1 for n in big_tree(COUNT) if n.role == R["button"])

        # Over the cap (the tool's lexicon stops at 500, so a11y.sock and the mirror only).
        nodes, total = await client.query(name="node", limit=MAX_LIMIT + 1)
        mirror = client.mirror.find(name="node", limit=MAX_LIMIT + 1)
        assert [ref(n) for n in nodes] == [ref(n) for n in mirror]
        assert (len(nodes), total) == (MAX_LIMIT, COUNT)
