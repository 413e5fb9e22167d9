"""What a11y.sock peers leave behind: nothing, once they are gone (the server in process)."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import struct
from pathlib import Path

import pytest

from kiki_a11y_server.server import A11yConfig, Peer, serve
from libkiki.service import ServiceContext
from libkiki.sockets import Listeners
from libkiki.systemd import Notifier

BOUND = 20.0


async def test_a_peer_gone_inside_a_frame_is_freed_without_a_garbage_collection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its state sat in reference cycles (a finished task's exception -> its frame -> the peer
    # -> the peer's tasks), so its unfinished frame stayed until a full collection ran.
    monkeypatch.setenv("KIKI_RUNTIME_DIR", str(tmp_path))
    config = A11yConfig(broker_tools=False, policy_file=str(tmp_path / "none.toml"))
    ctx = ServiceContext("a11y-server", "0", Listeners(), Notifier(""), config=config)
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
