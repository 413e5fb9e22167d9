"""The write side (libkiki.rpc.link): a peer that does not read holds up our writers and our
reading, not our memory; what is answered while a chunk is read leaves in one write, its slots
released once written; writes that never wait (try_notify) go out only ahead of nothing."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import orjson
import pytest

from kikitest.rpc_peers import (
    BOUND,
    Probe,
    bounded,
    connect_unix_raw,
    make_methods,
    raw,
    req,
    running,
    sync_methods,
)
from libkiki.rpc import connect_unix
from libkiki.rpc.link import Link
from libkiki.sockets import bind_unix

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_peer_that_never_reads_is_bounded_and_harms_nobody_else(
    sock_path: Path, probe: Probe, kind: str
) -> None:
    """Async handlers answer from tasks; synchronous ones as their request is read: bounded
    the same way."""
    answer = (1 << 20) - 100  # the largest whose answer line is within the 1 MiB limit
    methods, prefix = (
        (make_methods(probe), "") if kind == "async" else (sync_methods(probe), "now/")
    )
    async with (
        running(sock_path, methods, max_in_flight=4) as srv,
        raw(sock_path) as stuck,
        connect_unix(sock_path) as healthy,
    ):
        for round_ in range(6):
            # write() without drain(): this peer neither reads nor waits for us
            stuck.writer.write(
                b"".join(
                    orjson.dumps(req(f"{prefix}big", f"{round_}-{i}", [answer])) + b"\n"
                    for i in range(4)
                )
            )
            result = await bounded(healthy.request(f"{prefix}add", [round_, 1]))
            assert (result if kind == "async" else result["sum"]) == round_ + 1
        # Its answers wait in our buffer only up to its in-flight limit, whatever it sends.
        buffered = max(c.write_buffer_size for c in srv.connections)
        assert buffered <= 4 * (answer + 200) + 4 * 6 * 200


async def test_try_notify_sends_only_when_nothing_is_queued(sock_path: Path) -> None:
    # The server never reads: once the kernel buffers fill, try_notify refuses (and queues
    # nothing) instead of growing the buffer; a fresh connection takes notifications at once.
    listener = bind_unix(sock_path)
    peers: list[socket.socket] = []
    try:
        async with connect_unix_raw(sock_path, listener, peers) as conn:
            conn.set_write_limits(4096, sndbuf=4096)
            assert conn.try_notify("wake", {"n": 0}) is True
            sent = 1
            while conn.try_notify("wake", {"n": sent, "pad": "x" * 512}):
                sent += 1
                assert sent < 100_000, "the buffer never filled"
            assert conn.write_buffer_size > 0
            before = conn.write_buffer_size
            assert conn.try_notify("wake", {"n": -1}) is False
            assert conn.write_buffer_size == before  # nothing queued behind the backlog
            data = b""
            peers[0].setblocking(False)
            with suppress(BlockingIOError):
                while chunk := peers[0].recv(1 << 16):
                    data += chunk
            first = orjson.loads(data.split(b"\n", 1)[0])
            assert first == {"jsonrpc": "2.0", "method": "wake", "params": {"n": 0}}
        assert conn.try_notify("wake") is False  # closed
    finally:
        for p in peers:
            p.close()
        listener.close()


@asynccontextmanager
async def linked(
    released: list[int],
) -> AsyncIterator[tuple[Link, socket.socket, asyncio.Transport]]:
    """A Link on the transport of one end of a real socket pair; the other end, non-blocking,
    is the peer the test reads by hand. The transport is yielded too, to look at."""
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    loop = asyncio.get_running_loop()
    link = Link(loop, released.append)
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    assert isinstance(transport, asyncio.Transport)
    link.attach(transport)
    try:
        yield link, peer, transport
    finally:
        if not transport.is_closing():  # (3.11 fails to abort a transport closed after a drain)
            transport.abort()
        peer.close()


def unread(peer: socket.socket) -> bytes:
    data = b""
    with suppress(BlockingIOError):
        while chunk := peer.recv(1 << 16):
            data += chunk
    return data


async def test_writes_made_while_a_chunk_is_handled_leave_together_when_it_is() -> None:
    released: list[int] = []
    async with linked(released) as (link, peer, _):
        link.hold()
        link.write_nowait(b"a\n")
        link.release_written(1)
        link.write_nowait(b"b\n")
        link.release_written(2)
        assert unread(peer) == b""  # held until the chunk is handled
        assert released == []  # answered, not written: still in flight
        link.flush()
        assert released == [1, 2]
        assert unread(peer) == b"a\nb\n"  # an idle transport sends at once
        link.write_nowait(b"c\n")  # outside a chunk: straight to the transport
        link.release_written(3)
        assert released == [1, 2, 3]


async def test_a_full_transport_holds_answers_in_flight_and_writers_until_it_drains() -> None:
    released: list[int] = []
    async with linked(released) as (link, _, _):
        link.pause_writing()  # as the transport does past its high-water mark
        assert link.paused is not None
        link.release_written(7)
        link.hold()
        link.release_written(8)
        link.flush()
        assert released == []  # not taken yet: in flight until it drains
        writer = asyncio.ensure_future(link.write(b"x\n"))
        await asyncio.sleep(0)
        assert not writer.done()
        link.resume_writing()
        async with asyncio.timeout(BOUND):
            await writer
        assert released == [7, 8]
        assert link.paused is None


async def test_reading_resumes_only_when_every_pause_has_been_resumed() -> None:
    async with linked([]) as (link, _, transport):
        link.pause_reading()
        link.pause_reading()
        link.resume_reading()
        assert not transport.is_reading()
        link.pause_writing()
        link.resume_reading()
        assert not transport.is_reading()  # the full write buffer still holds it
        link.resume_writing()
        assert transport.is_reading()
        with pytest.raises(RuntimeError, match="without pause_reading"):
            link.resume_reading()


async def test_try_write_goes_out_only_ahead_of_nothing_and_encodes_only_then() -> None:
    encoded: list[str] = []

    def encode(method: str, params: int) -> bytes:
        encoded.append(method)
        return f"{method} {params}\n".encode()

    async with linked([]) as (link, peer, transport):
        assert link.try_write(encode, "now", 1)
        assert unread(peer) == b"now 1\n"
        link.set_write_limits(1 << 20, sndbuf=4096)
        while not transport.get_write_buffer_size():  # the kernel's buffer is full
            link.write_nowait(b"x" * 65536)
        assert not link.try_write(encode, "later", 2)
        assert encoded == ["now"]  # refused before it was encoded
        unread(peer)
    assert not link.try_write(encode, "closed", 3)  # the transport is closing


async def test_close_and_abort_end_the_transport_only_once_there_is_one() -> None:
    released: list[int] = []
    bare = Link(asyncio.get_running_loop(), released.append)
    assert not bare.attached
    assert not bare.close()  # nothing to close
    bare.abort()  # nor to abort
    async with linked(released) as (link, peer, transport):
        assert link.attached
        link.set_write_limits(1 << 20, sndbuf=4096)
        sent = 0
        while not transport.get_write_buffer_size():  # some of it is left in our buffer
            link.write_nowait(b"x" * 65536)
            sent += 65536
        assert link.close()
        assert transport.is_closing()
        got = 0
        async with asyncio.timeout(BOUND):
            while got < sent:
                await asyncio.sleep(0.001)
                got += len(unread(peer))
        assert got == sent  # closed once what was buffered is sent
    async with linked(released) as (link, _, transport):
        link.abort()
        assert transport.is_closing()
