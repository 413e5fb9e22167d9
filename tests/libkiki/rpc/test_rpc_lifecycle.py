"""A connection's end (libkiki.rpc.connection): a peer leaving, a handler closing, a server
draining or cut short; pending requests fail at once, handlers are cancelled."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack, suppress
from pathlib import Path

import pytest

from kikitest.rpc_peers import BOUND, Probe, bounded, make_methods, raw, req, running, sync_methods
from libkiki.errors import (
    PeerGone,
)
from libkiki.rpc import Methods, RequestContext, connect_unix
from libkiki.rpc.server import RpcServer
from libkiki.sockets import bind_unix

pytestmark = pytest.mark.integration


async def test_client_vanishing_mid_call_cancels_its_handler_only(
    server: RpcServer, sock_path: Path, probe: Probe
) -> None:
    async with raw(sock_path) as other:
        async with raw(sock_path) as leaver:
            await leaver.send(req("block", 1))
            await bounded(probe.started.wait())
            await leaver.send(b'{"jsonrpc": "2.0", "method": "add", "par')  # and half a message
        await bounded(probe.cancelled.wait())
        assert (await other.call(req("add", 1, [1, 2])))["result"] == 3


async def test_server_vanishing_mid_call_fails_pending_requests_at_once(tmp_path: Path) -> None:
    path = tmp_path / "hangup.sock"
    listener = bind_unix(path)
    listener.setblocking(False)
    got_request = asyncio.Event()

    async def one_peer() -> None:
        peer, _ = await asyncio.get_running_loop().sock_accept(listener)
        with peer:
            reader, writer = await asyncio.open_unix_connection(sock=peer)
            await reader.readline()
            got_request.set()
            writer.write(b'{"jsonrpc": "2.0", "res')  # half an answer, then gone
            await writer.drain()
            writer.close()

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(one_peer())
            async with connect_unix(path) as conn:
                call = asyncio.create_task(conn.request("anything", timeout=60))
                with pytest.raises(PeerGone):
                    await bounded(call)
                assert got_request.is_set()
                assert conn.closed
                with pytest.raises(PeerGone):
                    await conn.request("again")
    finally:
        listener.close()


async def test_handler_closing_its_connection_fails_the_callers_request(
    server: RpcServer, sock_path: Path
) -> None:
    async with connect_unix(sock_path) as conn:
        with pytest.raises(PeerGone):
            await bounded(conn.request("hang_up"))
        await bounded(conn.wait_closed())


async def test_server_exit_drains_in_flight_requests(sock_path: Path, probe: Probe) -> None:
    async with AsyncExitStack() as client_side:  # the client outlives the server
        async with running(sock_path, make_methods(probe), drain_timeout=BOUND):
            conn = await client_side.enter_async_context(connect_unix(sock_path))
            call = asyncio.create_task(conn.request("until_closing"))
            await bounded(probe.started.wait())
        assert await bounded(call) == "finished while draining"
        await bounded(conn.wait_closed())


async def test_server_exit_cancels_what_does_not_finish_in_time(
    sock_path: Path, probe: Probe
) -> None:
    async with AsyncExitStack() as client_side:
        async with running(sock_path, make_methods(probe), drain_timeout=0.1):
            conn = await client_side.enter_async_context(connect_unix(sock_path))
            call = asyncio.create_task(conn.request("block"))
            await bounded(probe.started.wait())
        assert probe.cancelled.is_set()
        with pytest.raises(PeerGone):
            await bounded(call)


async def test_a_server_exit_cancelled_while_draining_still_ends_every_connection(
    sock_path: Path, probe: Probe
) -> None:
    # A service bounds its whole stop (libkiki.service cancels it at drain_timeout): cancelled
    # while its connections drain, the server still ends each at once (the handlers are
    # cancelled, the peer sees the end), rather than waiting for the peers to leave.
    entered = asyncio.Event()
    servers: list[RpcServer] = []

    async def serve() -> None:
        async with running(sock_path, make_methods(probe), drain_timeout=3600) as srv:
            servers.append(srv)
            entered.set()
            await asyncio.Event().wait()

    stopping = asyncio.create_task(serve())
    await bounded(entered.wait())
    async with connect_unix(sock_path) as conn:
        call = asyncio.create_task(conn.request("block", timeout=3600))
        await bounded(probe.started.wait())
        [served] = servers[0].connections
        stopping.cancel()  # the server starts draining: its grace is an hour
        await bounded(served.wait_closing())
        stopping.cancel()  # the service's bound passes
        with pytest.raises(PeerGone):
            await bounded(call)
        assert probe.cancelled.is_set()
        with suppress(asyncio.CancelledError):
            await bounded(stopping)
        assert served.closed


async def test_server_exit_drains_a_sync_handlers_future(sock_path: Path, probe: Probe) -> None:
    async with AsyncExitStack() as client_side:
        async with running(sock_path, sync_methods(probe), drain_timeout=BOUND):
            conn = await client_side.enter_async_context(connect_unix(sock_path))
            call = asyncio.create_task(conn.request("now/future"))
            answer = await bounded(probe.notes.get())
            # Settled while the server drains: the answer still goes out.
            asyncio.get_running_loop().call_later(0.05, answer.set_result, "drained")
        assert await bounded(call) == "drained"


async def test_a_draining_server_waits_for_its_own_requests(sock_path: Path, probe: Probe) -> None:
    client_methods = Methods()

    @client_methods.method("client.slow")
    async def slow(ctx: RequestContext) -> str:
        await asyncio.sleep(0.1)
        return "late"

    async with AsyncExitStack() as client_side:  # the client outlives the server
        async with running(sock_path, make_methods(probe), drain_timeout=BOUND):
            conn = await client_side.enter_async_context(connect_unix(sock_path, client_methods))
            await bounded(conn.request("whoami"))
            sent = probe.contexts[0].connection.request_soon("client.slow")
            assert sent is not None
        assert await bounded(sent) == "late"  # answered while the server drained
