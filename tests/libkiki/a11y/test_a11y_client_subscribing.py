"""``A11yClient.subscribing``: the Subscribe goes out with the Hello, one round trip to a mirror.

A server of the test's own (a real Unix socket) shows what the client writes and when; a real
kiki-a11y-server shows the mirror it ends with.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from kikitest.a11y_fixtures import R, form_tree
from libkiki.a11y import wire
from libkiki.a11y.client import A11yClient
from libkiki.a11y.publisher import A11yPublisher
from libkiki.errors import PermissionDenied, Timeout
from libkiki.framing import FrameDecoder, encode_frame

pytestmark = pytest.mark.integration

Start = Callable[..., tuple[Path, subprocess.Popen[bytes]]]


async def _frames(reader: asyncio.StreamReader, count: int) -> list[wire.Message]:
    """The first ``count`` frames the client sent, read before anything is answered."""
    decoder = FrameDecoder(1 << 20)
    frames: list[wire.Message] = []
    while len(frames) < count:
        data = await reader.read(1 << 16)
        assert data, f"the client closed after {len(frames)} frames"
        for f in decoder.feed(data):
            assert isinstance(f, bytes)
            frames.append(wire.decode(f))
    return frames


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def test_the_subscribe_goes_out_before_the_hello_is_answered(sockdir: Path) -> None:
    seen: list[wire.Message] = []
    nodes = tuple(n._replace(tree_id=7) for n in form_tree())

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Nothing is answered until both frames are in: a client that waited for the Hello's
        # answer before subscribing would never get here.
        hello, subscribe = await _frames(reader, 2)
        seen.extend((hello, subscribe))
        snapshot = wire.Snapshot(
            subscribe.request_id,
            (wire.TreeUpdate(0, 7, 3, 0, 0, 1, nodes, (), 0, wire.App(7, "org.example.Form")),),
        )
        writer.write(
            encode_frame(wire.encode(wire.Hello(hello.request_id, 1, "test")))
            + encode_frame(wire.encode(snapshot))
        )
        await writer.drain()
        await reader.read()  # until the client leaves

    path = sockdir / "a11y.sock"
    server = await asyncio.start_unix_server(serve, str(path))
    async with server, asyncio.timeout(10):
        client = A11yClient.subscribing(
            path, apps=["org.example.Form"], roles=["button", R["textField"]], max_depth=4
        )
        async with client:
            (tree,) = client.mirror
            assert (tree.tree_id, tree.seq, tree.root, tree.app.app_id) == (
                7,
                3,
                1,
                "org.example.Form",
            )
            assert tree.nodes == {n.id: n for n in nodes}
            assert client.server == wire.Hello(seen[0].request_id, 1, "test")
    hello, subscribe = seen
    assert isinstance(hello, wire.Hello)
    assert subscribe == wire.Subscribe(
        subscribe.request_id, ("org.example.Form",), 0, 0, (R["button"], R["textField"]), 4
    )


async def test_a_refused_subscription_is_raised_on_entering_and_leaves_nothing_open(
    sockdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    served = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello, subscribe = await _frames(reader, 2)
        writer.write(
            encode_frame(wire.encode(wire.Hello(hello.request_id, 1, "test")))
            + encode_frame(wire.encode(wire.Error(subscribe.request_id, -32003, "not yours")))
        )
        await writer.drain()
        await reader.read()  # the client leaves
        writer.close()
        await writer.wait_closed()
        served.set()

    path = sockdir / "a11y.sock"
    server = await asyncio.start_unix_server(serve, str(path))
    async with server, asyncio.timeout(10):
        # An earlier test's server end that no one closed goes when it is collected: not here.
        gc.collect()
        before = _open_fds()
        with pytest.raises(PermissionDenied, match="not yours"):
            async with A11yClient.subscribing(path, apps=["org.example.Bank"]):
                pass
        await served.wait()  # this end of the connection closed too (it is in this process)
        assert _open_fds() == before
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        gc.collect()
    assert "never retrieved" not in caplog.text


async def test_a_closed_connection_fails_the_hello_and_the_subscription_alike(
    sockdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _frames(reader, 2)
        writer.write(encode_frame(wire.encode(wire.Error(0, -32005, "too many connections"))))
        writer.close()

    path = sockdir / "a11y.sock"
    server = await asyncio.start_unix_server(serve, str(path))
    async with server, asyncio.timeout(10):
        with pytest.raises(Exception, match="too many connections") as info:
            async with A11yClient.subscribing(path):
                pass
        assert type(info.value).__name__ == "LimitExceeded"
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        gc.collect()
    assert "never retrieved" not in caplog.text


async def test_the_hello_and_the_subscription_share_one_timeout(sockdir: Path) -> None:
    # The Hello is answered late (at 0.9 of the timeout) and the Subscribe never: entering
    # fails once the timeout has run out since the pair went out. Were each answer given a
    # timeout of its own, the Subscribe's would start at the Hello's answer and run out at
    # 1.9 timeouts at the earliest; the bound below sits between the two.
    timeout = 1.0
    hello_answered = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello, _ = await _frames(reader, 2)
        await asyncio.sleep(0.9 * timeout)
        writer.write(encode_frame(wire.encode(wire.Hello(hello.request_id, 1, "test"))))
        await writer.drain()
        hello_answered.set()
        await reader.read()  # the client leaves
        writer.close()

    path = sockdir / "a11y.sock"
    server = await asyncio.start_unix_server(serve, str(path))
    loop = asyncio.get_running_loop()
    async with server, asyncio.timeout(10):
        start = loop.time()
        with pytest.raises(Timeout, match=f"within {timeout}s"):
            async with A11yClient.subscribing(path, timeout=timeout):
                pass
        elapsed = loop.time() - start
    assert hello_answered.is_set()
    assert timeout <= elapsed < 1.8 * timeout


async def test_a_subscribing_client_mirrors_the_server_and_follows_it(a11y_server: Start) -> None:
    path, _ = a11y_server()
    async with asyncio.timeout(20), A11yPublisher(path, label="Form") as pub:
        await pub.publish(form_tree(), root_id=1)
        async with A11yPublisher(path, label="Other") as other:
            await other.publish([wire.Node(1, R["window"], "Other")], root_id=1)
            async with A11yClient.subscribing(path) as everything:
                assert sorted(t.app.label for t in everything.mirror) == ["Form", "Other"]
            async with A11yClient.subscribing(path, tree_id=pub.tree_id) as client:
                (tree,) = client.mirror
                assert tree.tree_id == pub.tree_id
                expected = {n.id: n._replace(tree_id=pub.tree_id) for n in form_tree()}
                assert tree.nodes == expected
                await pub.publish([wire.Node(3, R["textField"], "Title", value="typed")])
                title = (pub.tree_id, 3)
                await client.wait_for(lambda m: m.find(name="Title", text="typed"))
                await client.subscribe()  # a later Subscribe on the same connection still works
                assert client.mirror.node(title) == wire.Node(
                    3, R["textField"], "Title", value="typed", tree_id=pub.tree_id
                )
                assert client.resyncs == 0
