"""A connection's answers to the requests of one read leave in one write, in order: a Hello's
answer and the snapshot of the Subscribe sent with it reach the peer together. Real sockets."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from kiki_a11y_server.core import Session
from kiki_a11y_server.protocol import A11yConnection
from kiki_a11y_server.server import Peer
from libkiki.peer import PeerCred

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
