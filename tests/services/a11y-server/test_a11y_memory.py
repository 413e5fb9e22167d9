"""What a11y.sock peers leave behind: nothing, once they are gone (the server in process)."""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import socket
import struct
from pathlib import Path

import pytest

from kiki_a11y_server.config import A11yConfig
from kiki_a11y_server.server import Peer, serve
from libkiki.a11y import wire
from libkiki.framing import FrameDecoder
from libkiki.service import ServiceContext
from libkiki.sockets import Listeners
from libkiki.systemd import Notifier

pytestmark = pytest.mark.integration

BOUND = 20.0


async def test_a_peer_gone_inside_a_frame_is_freed_without_a_garbage_collection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    # Its state sat in reference cycles (a finished task's exception -> its frame -> the peer
    # -> the peer's tasks), so its unfinished frame stayed until a full collection ran.
    monkeypatch.setenv("KIKI_RUNTIME_DIR", str(tmp_path))
    config = A11yConfig(broker_tools=False, policy_file=str(tmp_path / "none.toml"))
    ctx = ServiceContext("a11y-server", "0", Listeners(), Notifier(""), config=config)
    request.addfinalizer(ctx.listeners.close)  # not the garbage collector, in a later test
    gc.collect()
    gc.disable()
    try:
        async with serve(ctx):
            loop = asyncio.get_running_loop()
            for _ in range(3):
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.setblocking(False)
                    await loop.sock_connect(sock, os.fspath(tmp_path / "a11y.sock"))
                    await loop.sock_sendall(sock, struct.pack("<I", 1 << 20) + bytes((1 << 20) - 1))
            async with asyncio.timeout(BOUND):
                while ctx.counters["protocol_errors"] < 3 or ctx.counters["connections"]:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            left = [o for o in gc.get_objects() if isinstance(o, Peer)]
            assert left == [], [type(r).__name__ for r in gc.get_referrers(*left)]
    finally:
        gc.enable()


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def test_a_peer_that_asks_and_never_reads_holds_no_more_than_the_write_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    # One read of 64 KiB holds ~860 queries; their answers (up to 1000 nodes each) went into
    # the transport's buffer all at once, read from the peer or not: two such connections took
    # a server from 60 MiB to 1.8 GB. Now the server stops reading a peer whose buffer is full.
    monkeypatch.setenv("KIKI_RUNTIME_DIR", str(tmp_path))
    config = A11yConfig(broker_tools=False, policy_file=str(tmp_path / "none.toml"))
    ctx = ServiceContext("a11y-server", "0", Listeners(), Notifier(""), config=config)
    request.addfinalizer(ctx.listeners.close)  # not the garbage collector, in a later test
    async with serve(ctx), asyncio.timeout(60):
        loop = asyncio.get_running_loop()
        path = os.fspath(tmp_path / "a11y.sock")
        publisher = socket.socket(socket.AF_UNIX)
        publisher.setblocking(False)
        await loop.sock_connect(publisher, path)
        count = 300
        nodes = [wire.Node(1, 1, "x" * 1000, children=tuple(range(2, count + 1)))]
        nodes += [wire.Node(i, 1, "x" * 1000) for i in range(2, count + 1)]
        update = wire.encode(wire.TreeUpdate(1, 0, 1, 0, 0, 1, tuple(nodes)))
        await loop.sock_sendall(publisher, struct.pack("<I", len(update)) + update)
        while not ctx.counters["requests"]:  # noqa: ASYNC110 -- the server in this process
            await asyncio.sleep(0.01)
        query = wire.encode(wire.Query(1, 0, "", 0, "", "", 0, 1000))
        queries = (struct.pack("<I", len(query)) + query) * (65536 // (len(query) + 4))
        before = _peak_rss_mib()
        with socket.socket(socket.AF_UNIX) as asker:
            asker.setblocking(False)
            await loop.sock_connect(asker, path)
            await loop.sock_sendall(asker, queries)  # ~250 MiB of answers, none read yet
            await asyncio.sleep(0)
            # Then read them all, slowly enough that the server would have buffered them.
            decoder, answers = FrameDecoder(64 << 20), 0
            while answers < len(queries) // (len(query) + 4):
                data = await loop.sock_recv(asker, 1 << 16)
                assert data, "the server closed the connection"
                answers += sum(1 for _ in decoder.feed(data))
        publisher.close()
        assert _peak_rss_mib() - before < 100, (before, _peak_rss_mib())
