"""serve_unix and connect_unix (libkiki.rpc.server): connection limits, refused peers,
running out of descriptors, a listener handed on by a process that has left."""

from __future__ import annotations

import asyncio
import os
import socket
from contextlib import AsyncExitStack, suppress
from pathlib import Path

import orjson
import pytest

from kikitest.rpc_peers import BOUND, Probe, make_methods, raw, req, running
from libkiki.errors import (
    Unavailable,
)
from libkiki.rpc import connect_unix, serve_unix

pytestmark = pytest.mark.integration


async def test_connection_limit_refuses_the_extra_peer_only(sock_path: Path, probe: Probe) -> None:
    async with running(sock_path, make_methods(probe), max_connections=1) as srv:
        async with raw(sock_path) as first:
            assert (await first.call(req("add", 1, [1, 1])))["result"] == 2
            async with raw(sock_path) as second:
                refused = await second.recv()
                assert refused["id"] is None
                assert refused["error"]["code"] == -32005
                assert await second.eof()
            assert (await first.call(req("add", 2, [2, 2])))["result"] == 4
        assert srv.counters["connections_refused"] == 1


async def test_a_flood_of_refused_peers_is_told_and_does_not_hold_the_servers_descriptors(
    sock_path: Path, probe: Probe
) -> None:
    # Every refused peer reads why; at most MAX_LINGERING of them are held (up to a second)
    # while their input is read, the rest are closed at once.
    from libkiki.admission import MAX_LINGERING

    async with (
        running(sock_path, make_methods(probe), max_connections=1) as srv,
        AsyncExitStack() as stack,
        raw(sock_path) as first,
    ):
        assert (await first.call(req("add", 1, [1, 1])))["result"] == 2
        flood = [await stack.enter_async_context(raw(sock_path)) for _ in range(MAX_LINGERING + 16)]
        async with asyncio.timeout(BOUND):
            while srv.counters["connections_refused"] < len(flood):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert srv.gate.admission.lingering <= MAX_LINGERING
        for peer in flood:
            assert (await peer.recv())["error"]["code"] == -32005
            assert await peer.eof()
        assert (await first.call(req("add", 2, [2, 2])))["result"] == 4


async def test_a_refused_peer_that_wrote_first_still_reads_its_error(
    sock_path: Path, probe: Probe
) -> None:
    # Its request is unread when it is refused: closed as it was, the socket reset the peer's
    # end and the error line was lost (ConnectionResetError on its read).
    async with (
        running(sock_path, make_methods(probe), max_connections=1),
        raw(sock_path) as first,
    ):
        assert (await first.call(req("add", 1, [1, 1])))["result"] == 2
        for _ in range(3):
            with socket.socket(socket.AF_UNIX) as second:
                second.connect(os.fspath(sock_path))
                second.sendall(orjson.dumps(req("add", 2, [2, 2])) + b"\n" + b"x" * 100_000)
                second.settimeout(BOUND)
                got = b""
                while chunk := await asyncio.to_thread(second.recv, 65536):
                    got += chunk
            assert orjson.loads(got)["error"]["code"] == -32005


async def test_connect_to_nothing_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="cannot connect"):
        async with connect_unix(tmp_path / "absent.sock"):
            pass


async def test_running_out_of_descriptors_pauses_accepting_then_serves(
    sock_path: Path, probe: Probe
) -> None:
    # EMFILE on accept() is transient: the loop backs off and accepts again once descriptors
    # are free, instead of dying (and taking the service down) or spinning.
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    async with running(sock_path, make_methods(probe)) as srv:
        fillers: list[int] = []
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 4096), hard))
            with suppress(OSError):
                while True:
                    fillers.append(os.dup(0))
            os.close(fillers.pop())  # one descriptor left: the client's, not the server's
            client.close()
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(str(sock_path))
            async with asyncio.timeout(BOUND):
                while srv.counters["accept_errors"] == 0:  # noqa: ASYNC110 -- a counter
                    await asyncio.sleep(0.01)
        finally:
            for fd in fillers:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        with client:
            client.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(
                client, b'{"jsonrpc":"2.0","id":1,"method":"add","params":[2,3]}\n'
            )
            async with asyncio.timeout(BOUND):
                reply = await loop.sock_recv(client, 4096)
        assert orjson.loads(reply) == {"jsonrpc": "2.0", "result": 5, "id": 1}
        assert srv.counters["connections_accepted"] == 1


LISTEN_AND_LEAVE = """
import socket, sys
pair = socket.socket(fileno=int(sys.argv[2]))
listener = socket.socket(socket.AF_UNIX)
listener.bind(sys.argv[1])
listener.listen()
socket.send_fds(pair, [b"listener"], [listener.fileno()])
"""


async def test_a_client_reaches_a_server_whose_listening_process_has_exited(
    sock_path: Path, probe: Probe
) -> None:
    # A client sees the server as the process that called listen(): under socket activation
    # or a launcher that hands its listener on, that process is gone. It still connects.
    import sys

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        args = [LISTEN_AND_LEAVE, str(sock_path), str(theirs.fileno())]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", *args, pass_fds=[theirs.fileno()]
        )
        async with asyncio.timeout(BOUND):
            assert await proc.wait() == 0
        _, fds, _, _ = socket.recv_fds(ours, 16, 1)
    listener = socket.socket(fileno=fds[0])
    try:
        async with (
            serve_unix(listener, make_methods(probe)),
            asyncio.timeout(BOUND),
            connect_unix(sock_path) as conn,
        ):
            assert await conn.request("add", [2, 3]) == 5
    finally:
        listener.close()
