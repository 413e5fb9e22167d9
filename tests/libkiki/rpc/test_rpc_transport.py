"""A Connection on a transport the caller makes (real pipes), and a connection's reading paused
to receive the descriptors its peer passes (real Unix sockets)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, ClassVar

import orjson
import pytest

from libkiki.errors import InvalidRequest, PeerGone, Unavailable
from libkiki.peer import PeerCred
from libkiki.rpc import Connection, Methods, RequestContext

pytestmark = pytest.mark.integration

BOUND = 5.0  # every wait in this module is bounded by this
ME = PeerCred(pid=os.getpid(), uid=os.getuid(), gid=os.getgid())


def adder() -> Methods:
    methods = Methods()

    @methods.method
    async def add(ctx: RequestContext, a: int, b: int) -> int:
        return a + b

    return methods


class PipeTransport(asyncio.Transport):
    """A small two-way transport on two pipes: reads ``reading`` into the protocol's buffer,
    writes ``writing`` (blocking: the messages here are far below a pipe's capacity). It owns
    both descriptors (``taken``) and closes them."""

    taken: ClassVar[set[int]] = set()

    def __init__(self, reading: int, writing: int, protocol: asyncio.BufferedProtocol) -> None:
        super().__init__()
        self.taken.update((reading, writing))
        self._loop = asyncio.get_running_loop()
        self._r, self._w = reading, writing
        self._protocol = protocol
        self._reading = False
        self._closing = False
        os.set_blocking(reading, False)
        protocol.connection_made(self)
        self.resume_reading()

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._r)

    def resume_reading(self) -> None:
        if not self._reading and not self._closing:
            self._reading = True
            self._loop.add_reader(self._r, self._ready)

    def _ready(self) -> None:
        buffer = self._protocol.get_buffer(-1)
        n = os.readv(self._r, [buffer])
        if n:
            self._protocol.buffer_updated(n)
        else:
            self.pause_reading()
            self._protocol.eof_received()
            self.close()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._closing:
            os.write(self._w, data)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self.pause_reading()
            os.close(self._r)
            os.close(self._w)
            self._loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


@contextmanager
def two_pipes() -> Iterator[tuple[tuple[int, int], tuple[int, int]]]:
    """Two pipes crossed: (a reads, a writes), (b reads, b writes). Each end's descriptors go to
    its transport; whatever no transport took is closed here."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    try:
        yield (r1, w2), (r2, w1)
    finally:
        for fd in (r1, w1, r2, w2):
            if fd in PipeTransport.taken:
                PipeTransport.taken.discard(fd)
            else:
                os.close(fd)


async def test_a_connection_runs_on_a_transport_the_caller_makes() -> None:
    with two_pipes() as (a, b):
        made: list[PipeTransport] = []

        def on(fds: tuple[int, int]) -> Any:
            def make(protocol: asyncio.BufferedProtocol) -> PipeTransport:
                made.append(PipeTransport(*fds, protocol))
                return made[-1]

            return make

        async with (
            Connection(transport=on(a), peer=ME, methods=adder()) as server,
            Connection(transport=on(b), peer=ME, name="client") as client,
        ):
            async with asyncio.timeout(BOUND):
                assert await client.request("add", {"a": 2, "b": 3}) == 5
                assert await client.request("add", {"a": 40, "b": 2}) == 42
            assert server.in_flight == 0
        assert len(made) == 2
        assert all(t.is_closing() for t in made)  # the connection closed its transport


async def test_a_connection_takes_a_socket_or_a_transport_factory_not_both() -> None:
    a, b = socket.socketpair()
    with a, b:
        with pytest.raises(TypeError):
            Connection(peer=ME)
        with pytest.raises(TypeError):
            Connection(a, transport=lambda protocol: PipeTransport(0, 1, protocol), peer=ME)


@asynccontextmanager
async def served() -> AsyncIterator[tuple[Connection, socket.socket]]:
    """An adding server's Connection on one end of a socket pair; the raw other end."""
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    with theirs:
        async with Connection(ours, peer=ME, methods=adder()) as conn:
            yield conn, theirs


async def call(sock: socket.socket, rid: int) -> Any:
    loop = asyncio.get_running_loop()
    line = {"jsonrpc": "2.0", "id": rid, "method": "add", "params": {"a": rid, "b": 1}}
    await loop.sock_sendall(sock, orjson.dumps(line) + b"\n")
    answer = b""
    while not answer.endswith(b"\n"):
        chunk = await loop.sock_recv(sock, 4096)
        assert chunk, "the server closed"
        answer += chunk
    return orjson.loads(answer)["result"]


async def sent_while_waiting(conn: Connection, peer: socket.socket, data: bytes) -> Any:
    """What ``conn.receive_fds(1)`` gets of ``data``, sent once it waits: had the transport been
    reading, it would have taken the bytes first (its reader runs in the same turn of the
    event loop as the wait's wake-up) and this would wait until the timeout."""
    waiting = asyncio.ensure_future(conn.receive_fds(1))
    await asyncio.sleep(0)  # receive_fds finds nothing and waits for the socket
    socket.send_fds(peer, [data], [])
    return await waiting


async def test_descriptors_are_received_while_reading_is_paused() -> None:
    async with served() as (conn, peer):
        async with asyncio.timeout(BOUND):
            assert await call(peer, 1) == 2
            conn.pause_reading()
            assert conn.reading_paused
            r, w = os.pipe()
            with os.fdopen(r, "rb") as ours:
                waiting = asyncio.ensure_future(conn.receive_fds(2))
                await asyncio.sleep(0)  # it waits for the socket (see sent_while_waiting)
                socket.send_fds(peer, [b"\n"], [w])
                os.close(w)
                data, fds = await waiting
                assert data == b"\n"
                assert len(fds) == 1
                os.write(fds[0], b"through the passed pipe")
                os.close(fds[0])
                assert ours.read() == b"through the passed pipe"
            conn.resume_reading()
            assert not paused(conn)
            assert await call(peer, 2) == 3


async def test_pauses_nest() -> None:
    async with served() as (conn, peer):
        async with asyncio.timeout(BOUND):
            conn.pause_reading()
            conn.pause_reading()
            conn.resume_reading()
            assert conn.reading_paused
            assert await sent_while_waiting(conn, peer, b"x") == (b"x", [])
            conn.resume_reading()
            assert await call(peer, 5) == 6
            with pytest.raises(RuntimeError):
                conn.resume_reading()


async def test_descriptors_only_while_paused_and_only_on_a_unix_socket() -> None:
    async with served() as (conn, _):
        with pytest.raises(Unavailable):
            await conn.receive_fds(2)
    with two_pipes() as (a, _b):
        async with Connection(
            transport=lambda protocol: PipeTransport(*a, protocol), peer=ME
        ) as conn:
            conn.pause_reading()
            with pytest.raises(Unavailable):
                await conn.receive_fds(2)


def paused(conn: Connection) -> bool:
    return conn.reading_paused


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_more_descriptors_than_asked_for_are_all_closed() -> None:
    async with served() as (conn, peer):
        conn.pause_reading()
        pipes = [os.pipe() for _ in range(2)]
        sent = [fd for pair in pipes for fd in pair]
        before = open_fds()
        socket.send_fds(peer, [b"\n"], sent)
        async with asyncio.timeout(BOUND):
            with pytest.raises(InvalidRequest):
                await conn.receive_fds(1)
        assert open_fds() == before
        for fd in sent:
            os.close(fd)


async def test_the_peer_leaving_while_descriptors_are_awaited() -> None:
    async with served() as (conn, peer):
        conn.pause_reading()
        waiting = asyncio.ensure_future(conn.receive_fds(2))
        await asyncio.sleep(0)
        peer.shutdown(socket.SHUT_WR)
        async with asyncio.timeout(BOUND):
            with pytest.raises(PeerGone):
                await waiting


async def test_a_pause_outlasts_the_write_buffer_draining() -> None:
    # The connection pauses reading on its own while the peer does not take its answers; that
    # pause ending must not end one the application asked for.
    methods = adder()
    called: asyncio.Queue[None] = asyncio.Queue()
    release = asyncio.Event()

    @methods.method
    async def big(ctx: RequestContext) -> str:
        called.put_nowait(None)
        await release.wait()
        return "x" * 900_000

    ours, peer = socket.socketpair()
    peer.setblocking(False)
    loop = asyncio.get_running_loop()
    with peer:
        async with Connection(ours, peer=ME, methods=methods) as conn:
            async with asyncio.timeout(BOUND):
                asks = b"".join(
                    orjson.dumps({"jsonrpc": "2.0", "id": i, "method": "big"}) + b"\n"
                    for i in range(3)
                )
                await loop.sock_sendall(peer, asks)
                for _ in range(3):
                    await called.get()
                conn.pause_reading()
                release.set()  # 2.7 MB of answers, and the peer not reading yet
                received = await loop.sock_recv(peer, 1 << 20)
                # Far more than the kernel holds: the write buffer is over its high-water mark,
                # so the connection paused reading on its own too.
                assert conn.write_buffer_size > 64 * 1024
                answers = received.count(b"\n")
                while answers < 3:
                    answers += (await loop.sock_recv(peer, 1 << 20)).count(b"\n")
                assert conn.write_buffer_size == 0  # drained: the connection's own pause ended
                assert await sent_while_waiting(conn, peer, b"x") == (b"x", [])
                conn.resume_reading()
                assert await call(peer, 7) == 8


async def test_a_pause_before_the_connection_starts() -> None:
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    with peer:
        conn = Connection(ours, peer=ME, methods=adder())
        conn.pause_reading()
        async with conn, asyncio.timeout(BOUND):
            assert await sent_while_waiting(conn, peer, b"x") == (b"x", [])
            conn.resume_reading()
            assert await call(peer, 1) == 2
