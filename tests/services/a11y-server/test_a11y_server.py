"""A real kiki-a11y-server process, real Unix sockets, real publishers and subscribers."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from kiki_cli.demos import a11y_app as demo
from kikitest import VENV_BIN
from kikitest.a11y_fixtures import R, big_tree, demo_env, form_tree, split_frames
from libkiki.a11y import wire
from libkiki.a11y.client import A11yClient, Mirror, ref
from libkiki.a11y.publisher import A11yPublisher
from libkiki.a11y.render import render_text
from libkiki.errors import InvalidParams, NotFound, PeerGone, Timeout
from libkiki.framing import FrameDecoder, encode_frame

pytestmark = pytest.mark.integration

N = wire.Node
Start = Callable[..., tuple[Path, subprocess.Popen[bytes]]]


def frame(message: wire.Message) -> bytes:
    return encode_frame(wire.encode(message))


class Raw:
    """A blocking socket speaking frames, for the cases a well-behaved client never produces."""

    def __init__(self, path: Path, *, rcvbuf: int = 0) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.decoder = FrameDecoder(64 << 20)
        self.frames: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> wire.Message:
        while not self.frames:
            data = self.sock.recv(1 << 16)
            assert data, "the server closed the connection"
            for f in self.decoder.feed(data):
                assert isinstance(f, bytes)
                self.frames.append(f)
        return wire.decode(self.frames.pop(0))

    def until(self, kind: type, request_id: int | None = None) -> tuple[Any, list[wire.Message]]:
        seen: list[wire.Message] = []
        while True:
            m = self.read()
            if isinstance(m, kind) and (request_id is None or m.request_id == request_id):
                return m, seen
            seen.append(m)

    def close(self) -> None:
        self.sock.close()


async def test_snapshot_then_updates_with_identity_from_the_kernel(a11y_server: Start) -> None:
    path, _ = a11y_server()
    async with (
        A11yPublisher(path, label="Editor") as pub,
        A11yClient(path) as client,
    ):
        # The payload claims another tree; the server decides who owns what.
        claimed = [n._replace(tree_id=999) for n in form_tree()]
        assert await pub.publish(claimed, root_id=1) == 1
        mirror = await client.subscribe()
        (tree,) = mirror
        assert tree.tree_id == pub.tree_id != 999
        assert (tree.app.pid, tree.app.uid) == (os.getpid(), os.getuid())
        assert tree.app.app_id == f"pid-{os.getpid()}"
        assert tree.app.label == "Editor"
        assert {n.id: n for n in (x._replace(tree_id=tree.tree_id) for x in form_tree())} == (
            tree.nodes
        )
        for k in range(20):
            await pub.publish([N(3, R["textField"], "Title", value=f"v{k}")], wait=k % 2 == 0)
        await pub.publish([N(2, R["form"], "Form", children=(3,))], cause=wire.CAUSES["user"])
        await client.wait_for(lambda m: len(m) == 3)
        assert tree.seq == pub.seq == 22
        assert tree.nodes[3].value == "v19"
        assert client.resyncs == 0


async def test_a_rejected_update_is_an_error_and_changes_nothing(a11y_server: Start) -> None:
    path, _ = a11y_server()
    async with A11yPublisher(path) as pub, A11yClient(path) as client:
        with pytest.raises(InvalidParams, match="must name its root_id"):
            await pub.publish(form_tree())
        await pub.publish(form_tree(), root_id=1)
        mirror = await client.subscribe()
        before = dict(next(iter(mirror)).nodes)
        with pytest.raises(InvalidParams, match="reparenting"):
            await pub.publish([N(2, R["form"], children=(3, 4, 5)), N(3, R["label"], "changed")])
        with pytest.raises(InvalidParams, match="neither in the tree"):
            await pub.publish([N(4, R["generic"], children=(5, 6, 77))])
        await pub.publish([N(6, R["button"], "Close")])
        await client.wait_for(lambda m: m.find(name="Close"))
        after = dict(next(iter(mirror)).nodes)
        assert {k: v for k, v in after.items() if k != 6} == {
            k: v for k, v in before.items() if k != 6
        }
        info = await client.info()
        assert dict(info.counters)["updates_rejected"] == 3


async def test_an_app_that_leaves_takes_its_tree_along(a11y_server: Start) -> None:
    path, _ = a11y_server()
    async with A11yClient(path) as client:
        await client.subscribe()
        raw = Raw(path)
        raw.send(frame(wire.Hello(1, 1, "raw")))
        raw.until(wire.Hello)
        raw.send(frame(wire.TreeUpdate(2, root_id=1, nodes=tuple(form_tree()))))
        raw.until(wire.Ack, 2)
        await client.wait_for(lambda m: len(m) == 6)
        # Half of an update, then gone: nothing of it applies, and the tree goes.
        update = frame(wire.TreeUpdate(3, nodes=(N(3, R["label"], "half"),)))
        raw.send(update[: len(update) // 2])
        raw.close()
        await client.wait_for(lambda m: not m.trees)
        assert not client.mirror.find(name="half")
        info = await client.info()
        assert dict(info.counters)["protocol_errors"] == 1
        assert dict(info.counters)["trees"] == 0


async def run_demo(path: Path) -> tuple[asyncio.Task[None], asyncio.Event]:
    ready = asyncio.Event()
    task = asyncio.create_task(demo.run(path, ready=ready))
    async with asyncio.timeout(10):
        await ready.wait()
    return task, ready


async def test_actions_reach_the_owning_app_and_its_changes_come_back(a11y_server: Start) -> None:
    path, _ = a11y_server()
    task, _ = await run_demo(path)
    try:
        async with A11yClient(path) as client:
            mirror = await client.subscribe()
            name = mirror.find(role="textField", name="Name")[0]
            save = mirror.find(role="button", name="Save")[0]
            with pytest.raises(InvalidParams, match="Name field is empty"):
                await client.act(ref(save), "press")
            assert await client.act(ref(name), "setValue", "Grace") == "set to 'Grace'"
            assert await client.act(ref(save), "press") == "Saved Grace"
            item = await client.wait_for(lambda m: m.find(role="listItem", name="Grace"))
            status = mirror.find(role="statusBar")[0]
            assert status.value == "Saved Grace"
            await client.act(ref(item[0]), "select")
            await client.wait_for(lambda m: m.find(name="Grace", states=["selected"]))
            with pytest.raises(InvalidParams, match="does not support press"):
                await client.act(ref(status), "press")
            with pytest.raises(NotFound, match="no longer exists"):
                await client.act(f"{name.tree_id}:4242", "press")
            with pytest.raises(NotFound, match="tree 99"):
                await client.act("99:1", "press")
    finally:
        task.cancel()


async def test_a_hanging_app_times_out_and_a_vanishing_one_fails(a11y_server: Start) -> None:
    path, _ = a11y_server(action_timeout=0.3)
    release = asyncio.Event()
    reached = asyncio.Event()

    async def hang(request: wire.ActionRequest) -> str:
        reached.set()
        await release.wait()
        return "too late"

    async with A11yPublisher(path, on_action=hang) as app, A11yClient(path) as client:
        await app.publish(form_tree(), root_id=1)
        target = f"{app.tree_id}:5"
        with pytest.raises(Timeout, match=r"did not answer press on node 5 within 0\.3s"):
            await client.act(target, "press")
        # The server kept serving meanwhile; the late answer is dropped.
        release.set()
        assert (await client.info()).name == "a11y-server"
        release.clear()
        reached.clear()
        pending = asyncio.create_task(client.act(target, "press", timeout=5))
        async with asyncio.timeout(10):
            await reached.wait()  # the server forwarded it and waits for the app's answer
        await app._close()
        with pytest.raises(PeerGone, match="closed its connection before answering"):
            await pending


async def test_bad_frames_get_typed_errors(a11y_server: Start) -> None:
    path, proc = a11y_server(max_frame=65536, max_nodes_per_frame=50)
    raw = Raw(path)
    good = wire.encode(wire.TreeUpdate(1, root_id=1, nodes=tuple(form_tree())))
    # Truncated inside a valid size prefix.
    raw.send(encode_frame(good[: len(good) // 2]))
    error, _ = raw.until(wire.Error)
    assert error.code == -32600
    # An unknown union type.
    bad = bytearray(good)
    root = struct.unpack_from("<I", bad, 0)[0]
    vtable = root - struct.unpack_from("<i", bad, root)[0]
    utype_at = root + struct.unpack_from("<H", bad, vtable + 6)[0]
    bad[utype_at] = 99
    raw.send(encode_frame(bytes(bad)))
    error, _ = raw.until(wire.Error)
    assert "unknown Body type 99" in error.message
    # Too many nodes in one frame.
    raw.send(frame(wire.TreeUpdate(2, root_id=1, nodes=tuple(big_tree(51)))))
    error, _ = raw.until(wire.Error)
    assert "more than 50 Node" in error.message
    # A message the server does not take.
    raw.send(frame(wire.Snapshot(3, ())))
    error, _ = raw.until(wire.Error)
    assert (error.request_id, error.code) == (3, -32601)
    # Still fine after all that.
    raw.send(frame(wire.TreeUpdate(4, root_id=1, nodes=tuple(form_tree()))))
    ack, _ = raw.until(wire.Ack, 4)
    assert ack.seq == 1
    # Too large: an error, then the connection is closed.
    raw.send(struct.pack("<I", 1 << 20) + b"x" * 64)
    error, _ = raw.until(wire.Error)
    assert "exceeds the limit of 65536" in error.message
    assert raw.sock.recv(10) == b""
    raw.close()
    assert proc.poll() is None


# Acknowledged every 50 updates, the server reads and flushes them in batches; acknowledged every
# one, it flushes a batch of one each time, which a server that moved its backlog into the
# transport's buffer (3.13's writelines() never pausing the protocol) never resyncs.
@pytest.mark.parametrize("ack_every", [50, 1])
async def test_a_slow_subscriber_is_told_to_resync(a11y_server: Start, ack_every: int) -> None:
    path, _ = a11y_server(write_buffer=4096, max_pending_bytes=16384)
    slow = Raw(path, rcvbuf=4096)
    slow.send(frame(wire.Subscribe(1)))
    slow.until(wire.Snapshot, 1)  # subscribed before anything is published
    async with A11yPublisher(path) as pub, A11yClient(path) as fast:
        await pub.publish(big_tree(100), root_id=1)
        await fast.subscribe()
        # The slow one reads nothing while 400 updates of distinct nodes go by: ~800 KB, more
        # than the kernel's socket buffer (208 KiB) holds however the server batches its writes.
        for k in range(400):
            node = big_tree(100)[k % 99 + 1]._replace(name=f"{k} " + "x" * 2000)
            await pub.publish([node], wait=k % ack_every == 0)
        await pub.publish([N(1, R["window"], "last", children=big_tree(100)[0].children)])
        await fast.wait_for(lambda m: m.find(name="last"))
        info = dict((await fast.info()).counters)
        assert info["subscriber_resyncs"] >= 1
        assert fast.resyncs == 0
        # Now it reads: updates in order, then the notice; it asks, and gets the present.
        messages: list[wire.Message] = []
        while not (messages and isinstance(messages[-1], wire.Resync)):
            messages.append(slow.read())
        seqs = [m.seq for m in messages if isinstance(m, wire.TreeUpdate)]
        assert seqs == sorted(seqs)
        slow.send(frame(wire.Resync(5)))
        snapshot, _ = slow.until(wire.Snapshot, 5)
        (tree,) = snapshot.trees
        mine = next(iter(fast.mirror))
        assert tree.seq == mine.seq
        assert {n.id: n for n in tree.nodes} == mine.nodes
    slow.close()


async def test_cli_dump_find_act_capture(a11y_server: Start, sockdir: Path) -> None:
    path, _ = a11y_server()
    env = demo_env(sockdir)
    app = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kiki_cli.demos.a11y_app", "--socket", str(path), env=env
    )
    try:

        async def kiki(*args: str) -> tuple[int, str]:
            proc = await asyncio.create_subprocess_exec(
                str(VENV_BIN / "kiki"), "a11y", *args, env=env, stdout=asyncio.subprocess.PIPE
            )
            async with asyncio.timeout(30):
                out, _ = await proc.communicate()
            return proc.returncode or 0, out.decode()

        async with A11yClient(path) as client:
            await client.subscribe()
            await client.wait_for(lambda m: m.find(name="Save"))
        code, text = await kiki("dump")
        assert code == 0
        assert '- button "Save"' in text
        assert "generic" not in text
        code, found = await kiki("find", "role=button", "name~=sav")
        assert code == 0
        assert found.startswith('button "Save" [')
        save_ref = found.split("[")[1].split("]")[0]
        tree_id = save_ref.split(":")[0]
        code, out = await kiki("act", f"{tree_id}:4", "setValue", "Linus")
        assert (code, out.strip()) == (0, "set to 'Linus'")
        capture = sockdir / "frames.ka11"
        cap = await asyncio.create_subprocess_exec(
            str(VENV_BIN / "kiki"), "a11y", "capture", str(capture), "--count", "2", env=env
        )

        async def subscribed() -> bool:  # its first frame (the snapshot) is in the file
            return capture.exists() and capture.stat().st_size > 0

        await wait_until(subscribed, "kiki a11y capture subscribed")
        assert (await kiki("act", save_ref, "press"))[0] == 0
        async with asyncio.timeout(30):
            assert await cap.wait() == 0
        frames = split_frames(capture.read_bytes())
        kinds = [type(wire.decode(f[4:])) for f in frames]
        assert kinds == [wire.Snapshot, wire.TreeUpdate]
        code, doc = await kiki("dump", "--json")
        assert '"name": "Linus"' in doc
        code, _ = await kiki("find", "name=Nobody")
        assert code == 1
    finally:
        app.terminate()
        await app.wait()


async def wait_until(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    async with asyncio.timeout(20):
        while True:
            try:
                if value := await check():
                    return value
            except Exception:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(what)


async def test_tools_on_the_broker(spawn_service: Any, sockdir: Path) -> None:
    from libkiki.errors import ToolError
    from libkiki.tools import ToolClient

    _, notes = spawn_service("tool-broker")
    notes.wait_for("READY")
    _, notes2 = spawn_service("a11y-server")
    notes2.wait_for("READY")
    task, _ = await run_demo(sockdir / "a11y.sock")
    try:
        async with ToolClient(sockdir / "tools.sock") as tools:

            async def listed() -> bool:
                return "dev.kiki.a11y.act" in {t["name"] for t in await tools.list()}

            await wait_until(listed, "the a11y tools on the broker")
            snap = await tools.call("dev.kiki.a11y.snapshot", {"maxNodes": 5})
            assert snap["truncated"] is True
            assert snap["shown"] == 5
            assert snap["text"].startswith("app ")
            found = await tools.call("dev.kiki.a11y.find", {"role": "checkBox"})
            (box,) = found["nodes"]
            assert box["states"] == ["focusable"]
            done = await tools.call("dev.kiki.a11y.act", {"ref": box["ref"], "action": "press"})
            assert done == {"ok": True, "message": "checked"}
            found = await tools.call("dev.kiki.a11y.find", {"state": "checked"})
            assert [n["ref"] for n in found["nodes"]] == [box["ref"]]
            with pytest.raises(ToolError, match="no longer exists"):
                await tools.call("dev.kiki.a11y.act", {"ref": "1:999", "action": "press"})
            # A role Kiki has none for, by its publisher's name, in both tools' answers.
            async with A11yPublisher(sockdir / "a11y.sock", label="Rulers") as pub:
                ruler = N(2, role_name="ruler")
                await pub.publish([N(1, R["window"], "Rulers", children=(2,)), ruler], root_id=1)
                found = await tools.call("dev.kiki.a11y.find", {"limit": 500})
                named = [n for n in found["nodes"] if "roleName" in n]
                assert [(n["ref"], n["role"], n["roleName"]) for n in named] == [
                    (f"{pub.tree_id}:2", "unknown", "ruler")
                ]
                snap = await tools.call("dev.kiki.a11y.snapshot", {})
                assert f"- unknown(ruler) [{pub.tree_id}:2]" in snap["text"]
    finally:
        task.cancel()


def test_mirror_gap_is_refused_and_marks_the_tree_stale() -> None:
    from libkiki.a11y.client import Mirror

    mirror = Mirror()
    mirror.load(wire.Snapshot(0, (wire.TreeUpdate(0, 1, 5, 0, 0, 1, (N(1),)),)))
    assert not mirror.apply(wire.TreeUpdate(0, 1, 7, 6, nodes=(N(1, name="x"),)))
    assert mirror.trees[1].stale
    assert mirror.trees[1].nodes[1].name == ""


async def test_cli_watch_prints_updates_as_json(a11y_server: Start, sockdir: Path) -> None:
    path, _ = a11y_server()
    async with A11yPublisher(path) as pub:
        await pub.publish(form_tree(), root_id=1)
        watch = await asyncio.create_subprocess_exec(
            str(VENV_BIN / "kiki"),
            "a11y",
            "watch",
            "--json",
            env=demo_env(sockdir),
            stdout=asyncio.subprocess.PIPE,
        )
        assert watch.stdout is not None
        try:
            async with asyncio.timeout(20):
                first = json.loads(await watch.stdout.readline())
                assert first == {"type": "snapshot", "trees": 1}
                await pub.publish([N(5, R["button"], "Save all")], cause=wire.CAUSES["agent"])
                update = json.loads(await watch.stdout.readline())
            assert update["type"] == "update"
            assert (update["seq"], update["baseSeq"], update["cause"]) == (2, 1, "agent")
            assert [n["name"] for n in update["nodes"]] == ["Save all"]
        finally:
            watch.terminate()
            await watch.wait()


async def test_a_filtered_subscription_over_the_socket(a11y_server: Start) -> None:
    path, _ = a11y_server()
    async with A11yPublisher(path) as pub, A11yClient(path) as client:
        await pub.publish(form_tree(), root_id=1)
        mirror = await client.subscribe(roles=["button"])
        (tree,) = mirror
        assert {n.name for n in tree.nodes.values()} == {"Save", "Cancel"}
        await pub.publish([N(6, R["label"], "Cancel")])
        await client.wait_for(lambda m: 6 not in tree.nodes)
        assert {n.name for n in tree.nodes.values()} == {"Save"}


async def test_a_burst_of_updates_on_a_stale_tree_asks_for_one_resync(sockdir: Path) -> None:
    """A scripted server on a real socket, backed by the real desktop: one update never reaches
    the client (a gap), then 20 more of that tree follow before its Resync can be answered."""
    from kiki_a11y_server.desktop import Desktop

    desktop = Desktop()
    tree = desktop.new_tree(wire.App(0, "a"))
    desktop.publish(tree, wire.TreeUpdate(root_id=1, nodes=tuple(form_tree())))
    got: list[wire.Message] = []
    snapshots_sent = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal snapshots_sent
        decoder = FrameDecoder(1 << 20)

        def send_pending() -> None:
            nonlocal snapshots_sent
            for f in desktop.take(desktop.subscribers[1]):
                snapshots_sent += isinstance(wire.decode(f), wire.Snapshot)
                writer.write(encode_frame(f))

        while data := await reader.read(65536):
            for f in decoder.feed(data):
                assert isinstance(f, bytes)
                m = wire.decode(f)
                got.append(m)
                match m:
                    case wire.Hello():
                        writer.write(frame(wire.Hello(m.request_id, 1, "script")))
                    case wire.Subscribe():
                        desktop.subscribe(1, m)
                        send_pending()
                        desktop.publish(tree, wire.TreeUpdate(nodes=(N(3, R["label"], "lost"),)))
                        desktop.take(desktop.subscribers[1])  # never sent: the gap
                        for k in range(20):
                            node = N(3, R["label"], "Title", value=f"v{k}")
                            desktop.publish(tree, wire.TreeUpdate(nodes=(node,)))
                            send_pending()
                    case wire.Resync():
                        desktop.resync(1, m.request_id)
                        send_pending()
            await writer.drain()

    path = sockdir / "script.sock"
    server = await asyncio.start_unix_server(script, str(path))
    async with server, A11yClient(path) as client:
        await client.subscribe()

        def current(m: Mirror) -> bool:
            node = m.node((tree.tree_id, 3))
            return node is not None and node.value == "v19" and not any(t.stale for t in m)

        await client.wait_for(current)
        await client.request(wire.Hello(0, 1, "barrier"))  # every Resync sent has arrived
        assert [type(m) for m in got].count(wire.Resync) == 1
        assert client.resyncs == 1
        assert snapshots_sent == 2  # the subscription's and the resync's
        assert client.mirror.trees[tree.tree_id].nodes == tree.nodes
        assert not client.mirror.trees[tree.tree_id].stale


async def test_a_blocked_subscriber_that_disconnects_is_a_disconnect(a11y_server: Start) -> None:
    path, proc = a11y_server(write_buffer=4096, max_pending_bytes=1 << 20)
    stalled = Raw(path, rcvbuf=4096)
    stalled.send(frame(wire.Subscribe(1)))
    async with A11yPublisher(path) as pub, A11yClient(path) as probe:
        await pub.publish(big_tree(100), root_id=1)

        async def subscribed() -> bool:
            return dict((await probe.info()).counters).get("subscribers") == 1

        await wait_until(subscribed, "the stalled subscriber is subscribed")
        # It reads nothing while updates pile up in its socket and the server's buffer.
        for k in range(300):
            node = big_tree(100)[k % 99 + 1]._replace(name=f"{k} " + "x" * 500)
            await pub.publish([node], wait=k % 50 == 0)
        await pub.publish([N(1, R["window"], "flushed", children=big_tree(100)[0].children)])
        # A request now leaves its handler waiting to write too, behind the blocked writer.
        stalled.send(frame(wire.Resync(2)))

        async def asked() -> bool:
            return dict((await probe.info()).counters).get("resyncs_requested") == 1

        await wait_until(asked, "the stalled subscriber's Resync is handled")
        # Closing with unread data resets the connection under both.
        stalled.close()

        async def gone() -> dict[str, int]:
            counters = dict((await probe.info()).counters)
            return counters if counters.get("subscribers") == 0 else {}

        counters = await wait_until(gone, "the stalled subscriber is gone")
        assert counters.get("disconnects", 0) == 1
        assert counters.get("handler_errors", 0) == 0
        # The server still serves its other peers.
        await pub.publish([N(1, R["window"], "after", children=big_tree(100)[0].children)])
        assert (await probe.query(name="after"))[1] == 1
    assert proc.stderr is not None
    assert b"connection handler failed" not in proc.stderr.read()


async def test_filtered_subscriptions_render_their_nodes(a11y_server: Start) -> None:
    path, _ = a11y_server()
    async with (
        A11yPublisher(path) as pub,
        A11yClient(path) as by_role,
        A11yClient(path) as by_subtree,
    ):
        await pub.publish(form_tree(), root_id=1)
        t = pub.tree_id
        text = render_text(await by_role.subscribe(roles=["button"])).text
        assert f'- button "Save" [{t}:5] (press)' in text
        assert f'- button "Cancel" [{t}:6] (press)' in text
        assert "Editor" not in text
        mirror = await by_subtree.subscribe(tree_id=t, root_id=2)
        assert mirror.trees[t].root == 2
        text = render_text(mirror).text
        assert text.splitlines()[1:] == [
            f'- form "Form" [{t}:2]',
            f'  - textField "Title" [{t}:3] value="draft" (setValue)',
            f'  - button "Save" [{t}:5] (press)',
            f'  - button "Cancel" [{t}:6] (press)',
        ]
        # Updates keep the views rendering.
        await pub.publish([N(6, R["button"], "Close", actions=(wire.ACTIONS["press"],))])
        await by_role.wait_for(lambda m: m.find(name="Close"))
        await by_subtree.wait_for(lambda m: m.find(name="Close"))
        assert f'- button "Close" [{t}:6] (press)' in render_text(by_role.mirror).text
        assert f'  - button "Close" [{t}:6] (press)' in render_text(by_subtree.mirror).text


async def test_tool_act_is_limited_and_a_bad_state_is_invalid_params(
    spawn_service: Any, sockdir: Path
) -> None:
    """The server's tools, called by a stand-in for the broker on a real tools.sock (so the
    provider's own error codes are seen; the broker turns them into tool failures)."""
    from libkiki.errors import LimitExceeded
    from libkiki.rpc.connection import Connection
    from libkiki.rpc.methods import Methods, RequestContext
    from libkiki.rpc.server import serve_unix

    registered: asyncio.Future[Connection] = asyncio.get_running_loop().create_future()
    methods = Methods()

    @methods.method("kiki/registerTools")
    async def register(
        ctx: RequestContext,
        tools: list[str],
        lexicons: Any = None,
        maxInFlight: Any = None,
        subscriptions: Any = None,
    ) -> Any:
        if not registered.done():
            registered.set_result(ctx.connection)
        return {}

    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sockdir / "tools.sock"))
    listener.listen()
    async with serve_unix(listener, methods):
        _, notes = spawn_service(
            "a11y-server",
            extra_env={
                "KIKI_A11Y_SERVER_MAX_ACTIONS_IN_FLIGHT": "1",
                "KIKI_LOG_LEVEL": "WARNING",
            },
        )
        notes.wait_for("READY")
        entered = asyncio.Event()
        release = asyncio.Event()

        async def hang(request: wire.ActionRequest) -> str:
            entered.set()
            await release.wait()
            return "done"

        async with A11yPublisher(sockdir / "a11y.sock", on_action=hang) as app:
            await app.publish(form_tree(), root_id=1)
            async with asyncio.timeout(20):
                provider = await registered

            # As the broker does: the caller's kernel-given identity (here root's) with each
            # call, for the a11y policy.
            meta = {"dev.kiki/caller": {"uid": 0, "gid": 0, "pid": os.getpid(), "groups": []}}

            async def call(name: str, arguments: dict[str, Any]) -> Any:
                return await provider.request(
                    "tools/call",
                    {"name": name, "arguments": arguments, "_meta": meta},
                    timeout=20,
                )

            press = {"ref": f"{app.tree_id}:5", "action": "press"}
            first = asyncio.create_task(call("dev.kiki.a11y.act", press))
            async with asyncio.timeout(20):
                await entered.wait()
            with pytest.raises(LimitExceeded, match="at most 1 actions in flight"):
                await call("dev.kiki.a11y.act", press)
            release.set()
            assert (await first)["structuredContent"] == {"ok": True, "message": "done"}
            with pytest.raises(InvalidParams, match="unknown state 'sleepy'"):
                await call("dev.kiki.a11y.find", {"state": "sleepy"})
            found = await call("dev.kiki.a11y.find", {"state": "focusable", "limit": 10**6})
            assert [n["name"] for n in found["structuredContent"]["nodes"]] == ["Title", "Save"]
