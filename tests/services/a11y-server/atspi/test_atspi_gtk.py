"""The AT-SPI bridge with real GTK apps on a real accessibility bus (Xvfb, at-spi2-core).

What the bridge publishes is checked against AT-SPI read independently (plain D-Bus calls
written here, not the bridge's code), and actions through Kiki must change the real app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
from functools import partial
from pathlib import Path

import pytest

from kiki_a11y_server.atspi import roles
from kiki_a11y_server.atspi.bridge import Bridge
from kikitest import VENV_BIN
from kikitest.atspi_fixtures import (
    AtspiDesktop,
    atspi_desktop,  # noqa: F401 -- the session's desktop, shared by these tests
    chromium_form,  # noqa: F401
    independent_nodes,
    pyatspi_walk,
    set_texts,
    tree_labelled,
)
from libkiki.a11y import wire
from libkiki.a11y.client import A11yClient, Mirror, MirrorTree
from libkiki.errors import Timeout
from libkiki.peer import app_id_from_cgroup

pytestmark = pytest.mark.interop

FACTORY = "gtk3-widget-factory"
S = wire.STATES
R = wire.ROLES


def first(
    tree: MirrorTree, role: str, name: str | None, *, without: int = 0, value: str | None = None
) -> wire.Node:
    for node in sorted(tree.nodes.values(), key=lambda n: n.id):
        if node.role != R[role] or node.states & (without | S["disabled"] | S["hidden"]):
            continue
        if (name is None or node.name == name) and (value is None or node.value == value):
            return node
    raise AssertionError(f"no {role} {name!r} in the factory's tree")


def test_kiki_a11y_dump_shows_the_widget_factory(atspi_desktop: AtspiDesktop) -> None:  # noqa: F811
    out = subprocess.run(
        [str(VENV_BIN / "kiki"), "a11y", "dump"],
        env=atspi_desktop.app_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert f'application "{FACTORY}"' in out
    for line in ('checkBox "checkbutton"', 'toggleButton "togglebutton"', 'tab "page 1"'):
        assert line in out
    assert "textField" in out
    assert 'value="entry"' in out


async def test_each_bridged_tree_is_named_for_its_own_app(atspi_desktop: AtspiDesktop) -> None:  # noqa: F811
    """The bridge names the app behind each tree (the bus daemon's word for its process), and
    the server, whose policy trusts the bridge to, takes it: per-app rules tell them apart."""
    factory = next(p for p in atspi_desktop.procs if p.args[0] == FACTORY)  # type: ignore[index]
    assert atspi_desktop.bridge is not None
    async with atspi_desktop.tree_of(FACTORY) as (_client, tree):
        assert tree.app.pid == factory.pid != atspi_desktop.bridge.pid
        # The app id of the factory's unit by the rule of every Kiki socket, else its pid.
        cgroup = await asyncio.to_thread(Path(f"/proc/{factory.pid}/cgroup").read_text)
        app_id, _, _ = app_id_from_cgroup(cgroup, os.getuid())
        assert tree.app.app_id == (app_id or f"pid-{factory.pid}")
        assert tree.app.label == FACTORY


async def test_another_users_apps_are_not_bridged(
    atspi_desktop: AtspiDesktop,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bridge whose user owns none of the apps on the bus (as a user's bridge sees a root
    GUI app on its display) publishes none of them: each app's task ends, said in the log,
    having opened no connection to the server."""
    caplog.set_level(logging.WARNING, "kiki_a11y_server.atspi.app")
    other = Bridge(atspi_desktop.a11y_address, atspi_desktop.socket, own_uid=os.getuid() + 4242)
    running = asyncio.create_task(other.run())
    try:
        await asyncio.wait_for(other.ready.wait(), 30)
        assert other.mirrors  # the factory at least
        done, _ = await asyncio.wait(list(other.tasks.values()), timeout=30)
        assert done == set(other.tasks.values())
        for mirror in other.mirrors.values():
            assert mirror.foreign
            assert mirror.updates == 0
        assert f"not bridging {next(iter(other.mirrors))}" in caplog.text
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def test_roles_names_and_states_agree_with_atspi(atspi_desktop: AtspiDesktop) -> None:  # noqa: F811
    truth = await independent_nodes(atspi_desktop.a11y_address, FACTORY)
    # The role table is AT-SPI's own numbering: every role number's name is what the app says.
    for node in truth:
        assert roles.ATSPI_ROLES[node.role] == node.role_name, node
    async with atspi_desktop.tree_of(FACTORY) as (_client, tree):
        assert len(tree.nodes) == len(truth)
        seen = {(n.name, n.role) for n in tree.nodes.values()}
        for node in truth:
            assert (node.name, roles.kiki_role(node.role)[0]) in seen, node


async def test_press_a_check_box_through_kiki(atspi_desktop: AtspiDesktop) -> None:  # noqa: F811
    async with atspi_desktop.tree_of(FACTORY) as (client, tree):
        box = first(tree, "checkBox", "checkbutton", without=S["checked"] | S["mixed"])
        before = await checked_boxes(atspi_desktop)
        answer = await client.act((tree.tree_id, box.id), "press")
        assert answer.lower().startswith("doaction(0, 'click'): at-spi answered true"), answer
        # The change comes back from AT-SPI's events as a tree update ...
        await client.wait_for(lambda _: tree.nodes[box.id].states & S["checked"])
        # ... and AT-SPI, read by pyatspi in a process of its own, agrees.
        assert await checked_boxes(atspi_desktop) == before + 1
        await client.act((tree.tree_id, box.id), "press")
        await client.wait_for(lambda _: not tree.nodes[box.id].states & S["checked"])


async def test_set_an_entrys_text_and_focus_it(atspi_desktop: AtspiDesktop) -> None:  # noqa: F811
    async with atspi_desktop.tree_of(FACTORY) as (client, tree):
        entry = first(tree, "textField", None, value="entry")
        answer = await client.act((tree.tree_id, entry.id), "setValue", "Kiki was here")
        assert "SetTextContents" in answer
        await client.wait_for(lambda _: tree.nodes[entry.id].value == "Kiki was here")
        walked = await asyncio.to_thread(pyatspi_walk, atspi_desktop, FACTORY)
        assert "Kiki was here" in {n["text"] for n in walked.nodes}
        assert "GrabFocus" in await client.act((tree.tree_id, entry.id), "focus")
        await client.wait_for(lambda _: tree.nodes[entry.id].states & S["focused"])


async def test_apps_come_hang_and_go(atspi_desktop: AtspiDesktop) -> None:  # noqa: F811
    app = atspi_desktop.start_app("gtk3-demo-application")
    label = "gtk3-demo-application"
    async with atspi_desktop.tree_of(label) as (client, tree):
        try:
            target = next(n for n in tree.nodes.values() if n.actions)
            app.send_signal(signal.SIGSTOP)
            with pytest.raises(Timeout):
                await client.act((tree.tree_id, target.id), target.actions[0], timeout=4)
            # Meanwhile the other app is served as before.
            factory = tree_labelled(client.mirror, FACTORY)
            assert factory is not None
            box = first(factory, "checkBox", "checkbutton", without=S["checked"] | S["mixed"])
            await client.act((factory.tree_id, box.id), "press")
            await client.act((factory.tree_id, box.id), "press")
            # Stale first (the tree still there, its root busy), then gone (--gone-after 3).
            await client.wait_for(lambda m: stale(m, tree), timeout=10)
            await client.wait_for(lambda m: tree.tree_id not in m.trees, timeout=10)
            app.send_signal(signal.SIGCONT)
            back = await client.wait_for(lambda m: tree_labelled(m, label), timeout=20)
            assert back.tree_id != tree.tree_id
        finally:
            app.send_signal(signal.SIGCONT)
            app.terminate()
            app.wait(timeout=10)
        await client.wait_for(lambda m: tree_labelled(m, label) is None, timeout=10)


def stale(mirror: Mirror, tree: MirrorTree) -> bool:
    """The tree is still published and its root says busy."""
    root = tree.nodes.get(tree.root)
    return tree.tree_id in mirror.trees and bool(root and root.states & S["busy"])


CHECKED = 4  # ATSPI_STATE_CHECKED (pyatspi.STATE_CHECKED)


async def checked_boxes(desktop: AtspiDesktop) -> int:
    """How many of the factory's check boxes pyatspi says are checked."""
    walked = await asyncio.to_thread(pyatspi_walk, desktop, FACTORY)
    return sum(1 for n in walked.nodes if n["role"] == "check box" and CHECKED in n["states"])


async def test_an_event_storm_is_coalesced(atspi_desktop: AtspiDesktop) -> None:  # noqa: F811
    """200 text changes sent as fast as D-Bus takes them (each is a delete and an insert event):
    the tree ends with the last text, in fewer updates than changes."""
    changes = 200
    async with atspi_desktop.tree_of(FACTORY) as (client, tree):
        entry = next(  # the entry another test may have written to already
            n
            for n in tree.nodes.values()
            if n.value in ("entry", "Kiki was here") and not n.states & S["disabled"]
        )
        await client.act((tree.tree_id, entry.id), "setValue", "before the storm")
        await client.wait_for(lambda _: tree.nodes[entry.id].value == "before the storm")
        seq = tree.seq
        truth = await independent_nodes(atspi_desktop.a11y_address, FACTORY)
        path = next(n.path for n in truth if n.text == "before the storm")
        await set_texts(atspi_desktop.a11y_address, path, [f"storm {i}" for i in range(changes)])
        await client.wait_for(lambda _: tree.nodes[entry.id].value == f"storm {changes - 1}")
        assert 0 < tree.seq - seq < changes


async def test_fill_and_submit_a_form_in_chromium(
    atspi_desktop: AtspiDesktop,  # noqa: F811
    chromium_form: subprocess.Popen[bytes],  # noqa: F811
) -> None:
    async with atspi_desktop.tree_of("Chromium", within=60) as (client, _):
        # The page's controls, named by their labels, once the page is in. A browser busy
        # starting may miss the bridge's one-second call timeout (the fixture's): its tree is
        # then published anew, so it is looked up by its label each time.
        def control(role: str, name: str) -> tuple[MirrorTree, wire.Node] | None:
            tree = tree_labelled(client.mirror, "Chromium")
            node = find(tree, role, name) if tree is not None else None
            return (tree, node) if tree is not None and node is not None else None

        def node(role: str, name: str) -> wire.Node | None:
            found = control(role, name)
            return found[1] if found is not None else None

        async def act(role: str, name: str, action: str, value: str = "") -> str:
            tree, target = await client.wait_for(lambda _: control(role, name), 60)
            return await client.act((tree.tree_id, target.id), action, value)

        tree, _ = await client.wait_for(lambda _: control("textField", "Full name"), 60)
        assert find(tree, "checkBox", "Newsletter") is not None
        assert find(tree, "button", "Send") is not None
        answer = await act("textField", "Full name", "setValue", "Ada Lovelace")
        assert "typed 12 characters" in answer
        # Each wait looks the control up again: a tree republished meanwhile has new ids.
        await client.wait_for(
            lambda _: (
                (n := node("textField", "Full name")) is not None and n.value == "Ada Lovelace"
            ),
            30,
        )
        await act("checkBox", "Newsletter", "press")
        await client.wait_for(
            lambda _: (n := node("checkBox", "Newsletter")) is not None and n.states & S["checked"],
            30,
        )
        await act("button", "Send", "press")
        # The page's own script says what it got.
        await client.wait_for(
            lambda _: (
                (t := tree_labelled(client.mirror, "Chromium")) is not None
                and any("Submitted Ada Lovelace with news" in n.name for n in t.nodes.values())
            ),
            30,
        )


def find(tree: MirrorTree, role: str, name: str) -> wire.Node | None:
    return next((n for n in tree.nodes.values() if n.role == R[role] and n.name == name), None)


QT_LINEEDITS = "/usr/lib/x86_64-linux-gnu/qt5/examples/widgets/widgets/lineedits/lineedits"


async def test_a_qt_app_set_a_line_edit(atspi_desktop: AtspiDesktop) -> None:  # noqa: F811
    """Qt 5's line edits example (Debian qtbase5-examples): Qt exposes itself on AT-SPI once
    the session says an assistive technology runs, which the bridge does."""
    if shutil.which(QT_LINEEDITS) is None:
        pytest.fail("qtbase5-examples is not installed (scripts/install-test-deps installs it)")
    app = atspi_desktop.start_app(QT_LINEEDITS)
    try:
        async with atspi_desktop.tree_of("lineedits", within=30) as (client, tree):
            echo = find(tree, "textField", "Echo")
            assert echo is not None
            assert find(tree, "comboBox", "Normal") is not None
            await client.act((tree.tree_id, echo.id), "setValue", "Kiki was here")
            await client.wait_for(lambda _: tree.nodes[echo.id].value == "Kiki was here")
            truth = await independent_nodes(atspi_desktop.a11y_address, "lineedits")
            assert "Kiki was here" in {n.text for n in truth}
    finally:
        app.terminate()
        app.wait(timeout=10)


def xdotool(desktop: AtspiDesktop, *args: str) -> str:
    if shutil.which("xdotool") is None:
        pytest.fail("xdotool is not installed (scripts/install-test-deps installs it)")
    return subprocess.run(
        ["xdotool", *args], env=desktop.app_env(), capture_output=True, text=True, check=True
    ).stdout


Shape = list[tuple[int, tuple[int, int, int, int] | None]]  # (depth, bounds), walk order


def same_bounds(tree: MirrorTree, read: Shape, _: Mirror) -> bool:
    return bounds_of(tree) == read


def bounds_of(tree: MirrorTree) -> Shape:
    """Each node's depth and bounds, depth first with children in order (pyatspi's walk)."""
    out: Shape = []
    stack = [(tree.root, 0)]
    while stack:
        node_id, depth = stack.pop()
        node = tree.nodes.get(node_id)
        if node is not None:
            out.append((depth, node.bounds))
            stack.extend((child, depth + 1) for child in reversed(node.children))
    return out


async def agrees_with_pyatspi(client: A11yClient, tree: MirrorTree, desktop: AtspiDesktop) -> None:
    """Every node's bounds are as pyatspi reads that same node's (the trees matched node to
    node, in walk order), once both settle (the app lays a window out a frame after its
    extents change, so one read may catch it halfway)."""
    read: Shape = []
    for _ in range(5):
        read = await pyatspi_bounds(desktop)
        try:
            await client.wait_for(partial(same_bounds, tree, read), timeout=5)
            return
        except TimeoutError:
            continue
    ours = bounds_of(tree)
    differ = [(i, a, b) for i, (a, b) in enumerate(zip(ours, read, strict=False)) if a != b]
    raise AssertionError(
        f"{len(ours)} nodes here, {len(read)} read by pyatspi; first differences: {differ[:5]}"
    )


async def pyatspi_bounds(desktop: AtspiDesktop) -> Shape:
    """The factory's nodes as pyatspi walks them: depth and extents (Kiki has no bounds for an
    empty one)."""
    walked = await asyncio.to_thread(pyatspi_walk, desktop, FACTORY)
    return [
        (n["depth"], (b[0], b[1], b[2], b[3]) if (b := n["bounds"]) and (b[2] or b[3]) else None)
        for n in walked.nodes
    ]


async def test_bounds_follow_a_window_that_moves_and_resizes(atspi_desktop: AtspiDesktop) -> None:  # noqa: F811
    """GTK says nothing when a window moves (no bounds-changed, no window:move) though every
    node's screen position changes: the bridge notices on its own, and every node's bounds
    end up as pyatspi reads them."""
    async with atspi_desktop.tree_of(FACTORY) as (client, tree):
        frame = max(
            (n for n in tree.nodes.values() if n.role == R["window"] and n.bounds),
            key=lambda n: n.bounds[2] * n.bounds[3] if n.bounds else 0,
        )
        assert frame.bounds is not None
        x, y, w, h = frame.bounds
        box = first(tree, "checkBox", "checkbutton")
        assert box.bounds is not None
        bx, by, bw, bh = box.bounds
        windows = xdotool(atspi_desktop, "search", "--onlyvisible", "--name", FACTORY).split()
        sizes = {
            win: xdotool(atspi_desktop, "getwindowgeometry", "--shell", win) for win in windows
        }
        window = next(win for win, geo in sizes.items() if f"WIDTH={w}\n" in geo)
        try:
            xdotool(atspi_desktop, "windowmove", window, str(x + 120), str(y + 80))
            await client.wait_for(
                lambda _: tree.nodes[box.id].bounds == (bx + 120, by + 80, bw, bh), timeout=15
            )
            await client.wait_for(
                lambda _: tree.nodes[frame.id].bounds == (x + 120, y + 80, w, h), timeout=15
            )
            await agrees_with_pyatspi(client, tree, atspi_desktop)

            xdotool(atspi_desktop, "windowsize", window, str(w - 300), str(h - 100))
            await client.wait_for(
                lambda _: tree.nodes[frame.id].bounds == (x + 120, y + 80, w - 300, h - 100),
                timeout=15,
            )
            await agrees_with_pyatspi(client, tree, atspi_desktop)
        finally:
            xdotool(atspi_desktop, "windowsize", window, str(w), str(h))
            xdotool(atspi_desktop, "windowmove", window, str(x), str(y))
        await client.wait_for(lambda _: tree.nodes[box.id].bounds == (bx, by, bw, bh), timeout=15)


async def test_a_hung_app_goes_stale_then_gone_unasked(atspi_desktop: AtspiDesktop) -> None:  # noqa: F811
    """Nothing asks the stopped app anything (no action, no event): the bridge's own watch
    notices, the tree goes busy, then away; the factory is served meanwhile."""
    label = "gtk3-demo-application"
    app = atspi_desktop.start_app(label)
    try:
        async with atspi_desktop.tree_of(label) as (client, tree):
            # Let the app finish starting (a window mapped late still sends events, and an
            # event would make the bridge ask it something): then nothing asks it anything.
            await asyncio.sleep(2)
            app.send_signal(signal.SIGSTOP)
            await client.wait_for(lambda m: stale(m, tree), timeout=10)
            factory = tree_labelled(client.mirror, FACTORY)
            assert factory is not None
            box = first(factory, "checkBox", "checkbutton")
            await client.act((factory.tree_id, box.id), "press")
            await client.act((factory.tree_id, box.id), "press")
            await client.wait_for(lambda m: tree.tree_id not in m.trees, timeout=10)
    finally:
        app.send_signal(signal.SIGCONT)
        app.terminate()
        app.wait(timeout=10)
