"""``dev.kiki.a11y.subscribeChanges`` end to end (issue 18): a real a11y-server serving the stream
through a real tool broker to ``ToolClient.subscribe``, apps publishing on ``a11y.sock``."""

from __future__ import annotations

import asyncio
import os
import pwd
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kikitest import until
from kikitest.a11y_fixtures import form_tree
from kikitest.second_user import open_to_others, run_as
from libkiki.a11y import wire
from libkiki.a11y.client import A11yClient
from libkiki.a11y.publisher import A11yPublisher
from libkiki.tools import Event, Lost, Subscription, ToolClient

pytestmark = pytest.mark.integration

CHANGES = "dev.kiki.a11y.subscribeChanges"
TREE_CHANGED = CHANGES + "#treeChanged"
PUBLIC = '[[allow]]\nprincipals = ["*", "remote:*"]\nrights = ["subscribe"]\napps = ["pid-*"]\n'
ME = f"pid-{os.getpid()}"  # the app id of a publisher outside any unit: this process


@dataclass
class Setup:
    tools: Path
    a11y: Path


@pytest.fixture
def stream_setup(sockdir: Path, spawn_service: Any) -> Callable[..., Setup]:
    """The broker, then the a11y-server with its tools and stream on it, under the given a11y
    policy and broker policy (files in the test's config directory)."""

    def start(a11y_policy: str, tool_policy: str = "", **settings: Any) -> Setup:
        etc = sockdir / "etc"
        etc.mkdir(exist_ok=True)
        (etc / "a11y-policy.toml").write_text(a11y_policy)
        (etc / "tool-policy.toml").write_text(tool_policy)
        _, notes = spawn_service("tool-broker")
        notes.wait_for("READY")
        env = {"KIKI_LOG_LEVEL": "WARNING"}
        env.update({f"KIKI_A11Y_SERVER_{k.upper()}": str(v) for k, v in settings.items()})
        _, notes = spawn_service("a11y-server", extra_env=env)
        notes.wait_for("READY")
        return Setup(sockdir / "tools.sock", sockdir / "a11y.sock")

    return start


async def registered(tools: ToolClient) -> None:
    async def check() -> bool:  # the server registers once it has found the broker
        return "dev.kiki.a11y.act" in {t["name"] for t in await tools.list()}

    await until(check, "the a11y-server registered on the broker")


async def until_message(
    stream: Subscription[Any], seen: list[dict[str, Any]], check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Read ``stream`` (recording every message in ``seen``) up to a message ``check`` likes."""
    async with asyncio.timeout(20):
        while True:
            item = await anext(stream)
            assert not isinstance(item, Lost), item
            if isinstance(item, Event):
                message: dict[str, Any] = item.message
                assert message["$type"] == TREE_CHANGED
                seen.append(message)
                if check(message):
                    return message


def changed(message: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {n["id"]: n for n in message.get("changed", ())}


@asynccontextmanager
async def other_app(path: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """An app in another process (another app id): one window; each line written to its stdin
    renames the window, and it prints the new revision."""
    script = """
import asyncio, sys
from libkiki.a11y import wire
from libkiki.a11y.client import A11yClient
from libkiki.a11y.publisher import A11yPublisher

async def main():
    async with A11yPublisher(sys.argv[1], label="Other") as app:
        await app.publish([wire.Node(1, wire.ROLES["window"], "Other")], root_id=1)
        print(app.tree_id, flush=True)
        while line := await asyncio.to_thread(sys.stdin.readline):
            node = wire.Node(1, wire.ROLES["window"], line.strip())
            print(await app.publish([node]), flush=True)

asyncio.run(main())
"""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        str(path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdin is not None
    try:
        await proc.stdout.readline()  # its tree is published
        yield proc, f"pid-{proc.pid}"
    finally:
        proc.stdin.close()
        await proc.wait()


async def rename(proc: asyncio.subprocess.Process, name: str) -> None:
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write(name.encode() + b"\n")
    await proc.stdin.drain()
    await proc.stdout.readline()


async def change_streams(path: Path) -> int:
    async with A11yClient(path) as client:
        counters = dict((await client.info()).counters)
    return counters["change_streams"]


async def test_a_subscriber_sees_an_apps_changes_with_refs_that_act_takes(
    stream_setup: Callable[..., Setup],
) -> None:
    setup = stream_setup(PUBLIC)
    pressed: list[int] = []

    async def on_action(request: wire.ActionRequest) -> str:
        pressed.append(request.node_id)
        return "saved"

    seen: list[dict[str, Any]] = []
    async with ToolClient(setup.tools) as tools:
        await registered(tools)
        async with tools.subscribe(CHANGES) as stream:
            async with A11yPublisher(setup.a11y, label="Editor", on_action=on_action) as editor:
                await editor.publish(form_tree(), root_id=1)
                # A new tree comes whole, with its refs and outline lines.
                first = await until_message(stream, seen, lambda m: True)
                assert first["appId"] == ME
                assert first["treeId"] == editor.tree_id
                assert first["reset"] is True
                assert first["revision"] == editor.seq
                nodes = changed(first)
                assert sorted(nodes) == [1, 2, 3, 4, 5, 6]
                save = nodes[5]
                assert save["ref"] == f"{editor.tree_id}:5"
                assert save["role"] == "button"
                assert save["actions"] == ["press"]
                assert f'button "Save" [{editor.tree_id}:5] (press)' in first["outline"]
                assert not any(line.startswith("generic") for line in first["outline"])

                act = {"ref": save["ref"], "action": "press"}
                assert await tools.call("dev.kiki.a11y.act", act) == {
                    "ok": True,
                    "message": "saved",
                }
                assert pressed == [5]

                # A change: only the node that changed, at the tree's new revision.
                field = wire.Node(3, wire.ROLES["textField"], "Title", value="final")
                seq = await editor.publish([field])
                update = await until_message(stream, seen, lambda m: m["revision"] == seq)
                assert sorted(changed(update)) == [3]
                assert changed(update)[3]["value"] == "final"
                assert "reset" not in update
                assert "removed" not in update
                line = f'textField "Title" [{editor.tree_id}:3] value="final"'
                assert update["outline"] == [line]

                # A removal: the wrapper drops Cancel.
                wrapper = wire.Node(4, wire.ROLES["generic"], children=(5,))
                seq = await editor.publish([wrapper])
                update = await until_message(stream, seen, lambda m: m["revision"] == seq)
                assert update["removed"] == [6]
                assert sorted(changed(update)) == [4]
                tree_id = editor.tree_id
            # The app leaves: its tree is gone.
            gone = await until_message(stream, seen, lambda m: m.get("gone", False))
            assert gone["treeId"] == tree_id
            assert gone["appId"] == ME


async def test_the_app_id_param_selects_one_apps_tree(
    stream_setup: Callable[..., Setup],
) -> None:
    setup = stream_setup(PUBLIC)
    seen: list[dict[str, Any]] = []
    everything: list[dict[str, Any]] = []
    async with (
        A11yPublisher(setup.a11y, label="Editor") as editor,
        other_app(setup.a11y) as (other, other_id),
        ToolClient(setup.tools) as tools,
    ):
        await editor.publish(form_tree(), root_id=1)
        await registered(tools)
        async with (
            tools.subscribe(CHANGES, appId=ME) as mine,
            tools.subscribe(CHANGES) as unfiltered,
        ):
            await until_message(mine, seen, lambda m: m.get("reset", False))
            await rename(other, "Renamed")  # before our own change: it would come first
            seq = await editor.publish([wire.Node(6, wire.ROLES["button"], "Stop")])
            await until_message(mine, seen, lambda m: m["revision"] == seq)
            await until_message(
                unfiltered, everything, lambda m: m["appId"] == ME and m["revision"] == seq
            )
            assert await change_streams(setup.a11y) == 2  # one upstream per params
            # A subscriber with a label of its own gets its own upstream, trees whole first.
            async with tools.subscribe(CHANGES, session="late") as late:
                first = await until_message(late, [], lambda m: True)
                assert first["reset"] is True
                assert await change_streams(setup.a11y) == 3

        async def closed() -> bool:  # the last subscriber left: the broker closed them
            return await change_streams(setup.a11y) == 0

        await until(closed, "the server's change streams closed")
    assert {m["appId"] for m in seen} == {ME}
    # The other app's change came before ours on the stream without the filter.
    assert any(m["appId"] == other_id and "Renamed" in str(m) for m in everything)


async def test_a_flooding_app_is_coalesced_into_few_messages(
    stream_setup: Callable[..., Setup],
) -> None:
    # Each upstream emits at most once per interval; what comes meanwhile merges per tree.
    setup = stream_setup(PUBLIC, changes_interval=2)
    seen: list[dict[str, Any]] = []
    updates = 300
    async with (
        A11yPublisher(setup.a11y, label="Editor") as editor,
        ToolClient(setup.tools) as tools,
    ):
        await editor.publish(form_tree(), root_id=1)
        await registered(tools)
        async with tools.subscribe(CHANGES) as stream:
            await until_message(stream, seen, lambda m: m.get("reset", False))
            for i in range(updates):
                node = wire.Node(3, wire.ROLES["textField"], "Title", value=f"v{i}")
                seq = await editor.publish([node])
            last = await until_message(stream, seen, lambda m: m["revision"] == seq)
    assert changed(last)[3]["value"] == f"v{updates - 1}"  # the latest data wins
    floods = seen[1:]
    # Without coalescing, one message per update (300); with it, one per interval, and the
    # flood takes well under the 20 s this would allow.
    assert len(floods) <= 10, [m["revision"] for m in floods]


async def test_a_second_user_does_not_see_roots_app(
    stream_setup: Callable[..., Setup], sockdir: Path, attacker: pwd.struct_passwd
) -> None:
    # The broker lets the second user subscribe; the a11y policy lets anyone subscribe to the
    # apps of pid-* except root's (a deny that names the second user): the shared stream
    # carries only what every subscriber may see, so root's app is not on it for anyone.
    setup = stream_setup(
        PUBLIC
        + f'[[deny]]\nprincipals = ["uid:{attacker.pw_uid}"]\nrights = ["subscribe"]\n'
        + f'apps = ["{ME}"]\n',
        f'[[allow]]\nprincipals = ["user:{attacker.pw_name}"]\ntools = ["dev.kiki.a11y.*"]\n',
    )
    open_to_others(sockdir, setup.tools, setup.a11y)
    tools_path, a11y_path = setup.tools, setup.a11y

    async def watch() -> dict[str, Any]:
        seen: list[dict[str, Any]] = []
        async with (
            A11yPublisher(a11y_path, label="Mine") as mine,
            ToolClient(tools_path) as client,
        ):
            await mine.publish([wire.Node(1, wire.ROLES["window"], "Mine")], root_id=1)
            own = f"pid-{os.getpid()}"
            async with client.subscribe(CHANGES) as stream:
                await until_message(stream, seen, lambda m: m["appId"] == own)
                seq = await mine.publish([wire.Node(1, wire.ROLES["window"], "Mine too")])
                await until_message(stream, seen, lambda m: m["revision"] == seq)
        return {"apps": sorted({m["appId"] for m in seen}), "own": own}

    async with (
        A11yPublisher(a11y_path, label="Editor") as editor,
        ToolClient(tools_path) as tools,
    ):
        await editor.publish(form_tree(), root_id=1)
        await registered(tools)
        stop = asyncio.Event()

        async def busy() -> None:  # root's app keeps changing while the second user watches
            i = 0
            while not stop.is_set():
                i += 1
                await editor.publish([wire.Node(6, wire.ROLES["button"], f"Cancel {i}")])
                await asyncio.sleep(0.01)

        task = asyncio.create_task(busy())
        try:
            got = await asyncio.to_thread(run_as, attacker, watch)
        finally:
            stop.set()
            await task
    assert got["apps"] == [got["own"]]
