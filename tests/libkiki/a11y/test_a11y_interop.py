"""Interop: frames captured from the server by `kiki a11y capture`, decoded by flatc.

flatc (the FlatBuffers project's own decoder, sharing no code with ours) reads each captured
size-prefixed frame with schemas/a11y.fbs; the JSON must hold exactly what the app published,
with the identity the server took from the kernel.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kikitest import VENV_BIN
from kikitest.a11y_fixtures import as_flatc, big_tree, demo_env, flatc_json, normalize, split_frames
from libkiki.a11y import wire
from libkiki.a11y.client import A11yClient
from libkiki.a11y.publisher import A11yPublisher

pytestmark = pytest.mark.interop


def nodes_json(nodes: list[wire.Node], tree_id: int) -> list[Any]:
    return [normalize(as_flatc(n._replace(tree_id=tree_id), "Node")) for n in nodes]


async def test_captured_frames_decode_with_flatc_to_what_was_published(
    a11y_server: Callable[..., tuple[Path, subprocess.Popen[bytes]]], sockdir: Path
) -> None:
    path, _ = a11y_server()
    published = big_tree(300)
    capture = sockdir / "capture.ka11"
    async with A11yPublisher(path, label="Interop") as pub, A11yClient(path) as watcher:
        await pub.publish(published, root_id=1)
        cap = await asyncio.create_subprocess_exec(
            str(VENV_BIN / "kiki"),
            "a11y",
            "capture",
            str(capture),
            "--count",
            "3",
            env=demo_env(sockdir),
        )

        async with asyncio.timeout(20):
            # Polling the server's own count: the capture runs in another process.
            while dict((await watcher.info()).counters).get("subscribers", 0) < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        changed = [n._replace(name=f"renamed {n.id}", value="v") for n in published[100:110]]
        await pub.publish(changed, cause=wire.CAUSES["user"])
        # Node 2's children (and their subtrees) go away.
        await pub.publish([published[1]._replace(children=())])
        async with asyncio.timeout(30):
            assert await cap.wait() == 0
        tree_id = pub.tree_id

    frames = split_frames(capture.read_bytes())
    docs = [flatc_json(f, size_prefixed=True) for f in frames]
    assert all(d is not None for d in docs)
    snapshot, update, removal = docs
    assert snapshot is not None
    assert update is not None
    assert removal is not None

    assert snapshot["body_type"] == "Snapshot"
    (tree,) = snapshot["body"]["trees"]
    assert tree["tree_id"] == tree_id
    assert tree["root_id"] == 1
    expected_app = {
        "tree_id": tree_id,
        "app_id": f"pid-{os.getpid()}",
        "pid": os.getpid(),
        "uid": os.getuid(),
        "label": "Interop",
    }
    assert normalize(tree["app"]) == normalize(expected_app)
    got = sorted((normalize(n) for n in tree["nodes"]), key=lambda n: n["id"])
    assert got == nodes_json(published, tree_id)

    assert update["body_type"] == "TreeUpdate"
    body = update["body"]
    assert (body["seq"], body["base_seq"], body["cause"]) == (2, 1, "user")
    assert [normalize(n) for n in body["nodes"]] == nodes_json(changed, tree_id)

    body = removal["body"]
    gone = set(published[1].children)
    stack = list(gone)
    while stack:
        gone.update(kids := list(published[stack.pop() - 1].children))
        stack.extend(kids)
    assert (body["seq"], body["base_seq"]) == (3, 2)
    assert set(body["removed"]) == gone
    assert [n["id"] for n in body["nodes"]] == [2]
