"""A connection's answers to the requests of one read leave in one write, in order: a Hello's
answer and the snapshot of the Subscribe sent with it reach the peer together. Real sockets:
:class:`Peer`'s holding alone, and a real server's sends for a Hello and Subscribe sent at once.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

from kiki_a11y_server.config import A11yConfig
from kiki_a11y_server.core import Session
from kiki_a11y_server.protocol import A11yConnection
from kiki_a11y_server.server import Peer, serve
from kikitest.a11y_fixtures import form_tree, split_frames
from libkiki.a11y import wire
from libkiki.a11y.publisher import A11yPublisher
from libkiki.framing import encode_frame
from libkiki.peer import PeerCred
from libkiki.service import ServiceContext
from libkiki.sockets import Listeners
from libkiki.systemd import Notifier

pytestmark = pytest.mark.integration


def framed(payload: bytes) -> bytes:
    return struct.pack("<I", len(payload)) + payload


async def a_peer() -> tuple[Peer, socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX)
    theirs.setblocking(False)
    _, writer = await asyncio.open_connection(sock=ours)
    session = Session(1, PeerCred(pid=1, uid=0, gid=0), A11yConnection(1 << 20))
    return Peer(session, writer), theirs


async def test_held_frames_leave_together_on_release() -> None:
    peer, theirs = await a_peer()
    with theirs:
        peer.hold()
        peer.write(b"hello")
        peer.send(framed(b"snapshot"))
        assert peer.buffered() == len(framed(b"hello")) + len(framed(b"snapshot"))
        await asyncio.sleep(0)
        with pytest.raises(BlockingIOError):  # nothing was written while held
            theirs.recv(1024)
        peer.release()
        await peer.writer.drain()
        assert theirs.recv(1024) == framed(b"hello") + framed(b"snapshot")
        assert peer.buffered() == 0
        peer.writer.close()


async def test_not_held_frames_are_written_at_once() -> None:
    peer, theirs = await a_peer()
    with theirs:
        peer.release()  # nothing held: nothing written
        peer.write(b"one")
        await peer.writer.drain()
        assert theirs.recv(1024) == framed(b"one")
        peer.writer.close()


async def test_a_closing_connection_drops_what_was_held() -> None:
    peer, theirs = await a_peer()
    with theirs:
        peer.hold()
        peer.write(b"late")
        peer.writer.close()
        peer.release()  # no write on a closing transport (it would raise or be lost)
        await asyncio.sleep(0)
        assert theirs.recv(1024) == b""  # the end of the stream, and nothing before it


class ServerSends:
    """Every send() and sendmsg() of this process's sockets bound to ``path`` (the server's
    side of its connections), by socket, as the bytes the kernel took. The calls go through
    to the real socket: this counts the server's system calls, it does not stand in for them.
    The peer cannot count them itself: a Unix stream socket's queue (FIONREAD) and a recv()
    join what one writer sent in any number of calls."""

    def __init__(self, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path = str(path)
        self.sent: dict[int, list[bytes]] = {}
        real_send, real_sendmsg = socket.socket.send, socket.socket.sendmsg

        def send(sock: socket.socket, data: Any, *flags: int) -> int:
            n = real_send(sock, data, *flags)
            self._record(sock, bytes(data)[:n])
            return n

        def sendmsg(sock: socket.socket, buffers: Any, *more: Any) -> int:
            n = real_sendmsg(sock, buffers, *more)
            self._record(sock, b"".join(bytes(b) for b in buffers)[:n])
            return n

        monkeypatch.setattr(socket.socket, "send", send)
        monkeypatch.setattr(socket.socket, "sendmsg", sendmsg)

    def _record(self, sock: socket.socket, data: bytes) -> None:
        if sock.family == socket.AF_UNIX and sock.getsockname() == self.path:
            self.sent.setdefault(id(sock), []).append(data)


async def test_a_servers_answers_to_hello_and_subscribe_leave_in_one_send(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KIKI_RUNTIME_DIR", str(tmp_path))
    config = A11yConfig(broker_tools=False, policy_file=str(tmp_path / "none.toml"))
    listeners = Listeners()
    ctx = ServiceContext("a11y-server", "0", listeners, Notifier(""), config=config)
    path = tmp_path / "a11y.sock"
    try:
        async with serve(ctx), A11yPublisher(path) as pub:
            await pub.publish(form_tree(), root_id=1)  # a snapshot with a tree in it
            sends = ServerSends(path, monkeypatch)
            frames = await hello_and_subscribe(path)
            # Taken now: what the server sends once we are gone (a tree's removal) is not ours.
            sent = [list(calls) for calls in sends.sent.values()]
    finally:
        listeners.close()  # here, not by the garbage collector during some later test
    hello, snapshot = (wire.decode(f[4:]) for f in frames)
    assert isinstance(hello, wire.Hello)
    assert isinstance(snapshot, wire.Snapshot)
    assert (hello.request_id, snapshot.request_id) == (1, 2)
    assert len(snapshot.trees) == 1
    # One connection was written to while we asked, in one system call carrying both answers.
    assert sent == [[b"".join(frames)]]


async def hello_and_subscribe(path: Path) -> list[bytes]:
    """Send a Hello and a Subscribe in one write; their two answers, as framed."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, str(path))
        await loop.sock_sendall(
            sock,
            encode_frame(wire.encode(wire.Hello(1, wire.PROTOCOL_VERSION, "test")))
            + encode_frame(wire.encode(wire.Subscribe(2))),
        )
        received = b""
        async with asyncio.timeout(30):
            while len(frames := complete(received)) < 2:
                chunk = await loop.sock_recv(sock, 1 << 20)
                assert chunk, "the server closed the connection"
                received += chunk
        return frames


def complete(data: bytes) -> list[bytes]:
    """The whole frames at the start of ``data``."""
    end = 0
    while len(data) >= end + 4 and len(data) >= (
        nxt := end + 4 + int.from_bytes(data[end : end + 4], "little")
    ):
        end = nxt
    return split_frames(data[:end])
