"""Our requests to the peer (libkiki.rpc.calling): ids, batches, progress, deadlines, cancelling
at the peer, the outgoing in-flight limit, request_soon, over real Unix sockets."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from kikitest.rpc_peers import Probe, bounded, raw, req
from libkiki.errors import (
    LimitExceeded,
    MethodNotFound,
    Timeout,
    Unavailable,
)
from libkiki.peer import PeerCred
from libkiki.rpc import Call, Connection, Methods, RequestContext, connect_unix
from libkiki.rpc.server import RpcServer

pytestmark = pytest.mark.integration


async def test_response_to_unknown_id_is_logged_and_ignored(
    server: RpcServer, sock_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="libkiki.rpc")
    async with raw(sock_path) as client:
        await client.send({"jsonrpc": "2.0", "result": "stray", "id": 999})
        assert (await client.call(req("add", 1, [1, 2])))["result"] == 3
    assert "unknown id 999" in caplog.text


async def test_server_calls_and_notifies_the_client_on_the_same_connection(
    server: RpcServer, sock_path: Path
) -> None:
    notes: asyncio.Queue[str] = asyncio.Queue()
    client_methods = Methods()

    @client_methods.method("client.double")
    async def double(ctx: RequestContext, x: int) -> int:
        return 2 * x

    @client_methods.method("client.note")
    async def on_note(ctx: RequestContext, text: str) -> None:
        await notes.put(text)

    async with connect_unix(sock_path, client_methods) as conn:
        assert await bounded(conn.request("ask_back", [21])) == 42
        assert await bounded(conn.request("tell_back", {"text": "hi"})) == "told"
        assert await bounded(notes.get()) == "hi"


async def test_client_batch(server: RpcServer, sock_path: Path, probe: Probe) -> None:
    async with connect_unix(sock_path) as conn:
        outcomes = await bounded(
            conn.batch(
                [
                    Call("add", [1, 2]),
                    Call("record", ["from batch"], notification=True),
                    Call("nope"),
                    Call("add", {"a": 5, "b": 5}),
                ]
            )
        )
        assert outcomes[0] == 3
        assert isinstance(outcomes[1], MethodNotFound)
        assert outcomes[2] == 10
        assert await bounded(probe.notes.get()) == "from batch"


async def test_progress_notifications_reach_the_caller(server: RpcServer, sock_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    async def on_progress(params: dict[str, Any]) -> None:
        seen.append(params)

    async with connect_unix(sock_path) as conn:
        assert await bounded(conn.request("work/steps", {"n": 3}, on_progress=on_progress)) == 3
        assert await bounded(conn.request("work/steps", {"n": 2})) == 2  # no token, no progress
    assert [p["progress"] for p in seen] == [1, 2, 3]
    assert seen[-1]["total"] == 3
    assert seen[0]["message"] == "step 1"


async def test_many_pipelined_requests_are_matched_by_id(
    server: RpcServer, sock_path: Path
) -> None:
    async with connect_unix(sock_path, max_in_flight=32) as conn:
        results = await bounded(
            asyncio.gather(*(conn.request("add", [i, 1000]) for i in range(500)))
        )
        assert results == [i + 1000 for i in range(500)]
    async with raw(sock_path) as client:
        await client.send(
            b"".join(orjson.dumps(req("add", f"r{i}", [i, i])) + b"\n" for i in range(50))
        )
        responses = [await client.recv() for _ in range(50)]
        assert {r["id"]: r["result"] for r in responses} == {f"r{i}": 2 * i for i in range(50)}


async def test_timeout_raises_and_cancels_the_handler_at_the_peer(
    server: RpcServer, sock_path: Path, probe: Probe
) -> None:
    async with connect_unix(sock_path) as conn:
        with pytest.raises(Timeout):
            await bounded(conn.request("block", timeout=0.2))
        assert probe.started.is_set()
        await bounded(probe.cancelled.wait())  # notifications/cancelled reached the server
        assert await bounded(conn.request("add", [1, 1])) == 2
        assert conn.outgoing == 0


async def test_caller_cancellation_is_sent_to_the_peer(
    server: RpcServer, sock_path: Path, probe: Probe
) -> None:
    async with connect_unix(sock_path) as conn:
        call = asyncio.create_task(conn.request("block"))
        await bounded(probe.started.wait())
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await bounded(probe.cancelled.wait())


async def test_outgoing_in_flight_limit_waits_for_a_slot(
    server: RpcServer, sock_path: Path, probe: Probe
) -> None:
    async with connect_unix(sock_path, max_in_flight=1) as conn, connect_unix(sock_path) as other:
        first = asyncio.create_task(conn.request("block"))
        await bounded(probe.started.wait())
        second = asyncio.create_task(conn.request("whoami"))
        given_up = asyncio.create_task(conn.request("whoami"))
        # A full round trip on another connection gives the waiting calls every chance to go out.
        assert await bounded(other.request("add", [1, 1])) == 2
        assert probe.contexts == []
        assert not second.done()
        assert conn.outgoing == 1
        given_up.cancel()  # a caller leaving while waiting for a slot must not leak it
        probe.release.set()
        assert await bounded(first) == "released"
        assert (await bounded(second))["uid"] == os.getuid()
        assert given_up.cancelled()
        assert await bounded(conn.request("add", [2, 2])) == 4
        with pytest.raises(LimitExceeded):
            await conn.batch([Call("add", [1, 1]), Call("add", [2, 2])])


async def test_a_slow_progress_callback_is_bounded_and_runs_before_the_result(
    server: RpcServer, sock_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 600 progress notifications against a callback that is stuck until the call has answered:
    # the queue holds what it can, the rest is dropped (and logged), the reading never stops,
    # and every callback that was queued has run by the time request() returns.
    gate = asyncio.Event()
    seen: list[float] = []

    async def on_progress(params: dict[str, Any]) -> None:
        await gate.wait()
        seen.append(params["progress"])

    async with connect_unix(sock_path) as conn:
        call = asyncio.ensure_future(
            conn.request("work/steps", {"n": 600}, on_progress=on_progress)
        )
        assert await bounded(conn.request("add", [2, 3])) == 5  # the connection still reads
        gate.set()
        assert await bounded(call) == 600
        taken = len(seen)
    assert 0 < taken < 600
    assert seen == sorted(seen)
    assert "progress callbacks are behind" in caplog.text


async def test_request_soon_answers_times_out_and_cancels_at_the_peer(
    server: RpcServer, sock_path: Path, probe: Probe
) -> None:
    async with connect_unix(sock_path, max_in_flight=1) as conn:
        sent = conn.request_soon("add", [1, 2])
        assert sent is not None
        assert await bounded(sent) == 3
        sent = conn.request_soon("block", timeout=0.2)
        assert sent is not None
        assert conn.request_soon("add", [1, 1]) is None  # the one slot is taken: nothing sent
        with pytest.raises(Timeout):
            await bounded(sent)
        await bounded(probe.cancelled.wait())  # notifications/cancelled reached the handler
        probe.started.clear()
        probe.cancelled.clear()
        sent = conn.request_soon("block")
        assert sent is not None
        await bounded(probe.started.wait())
        sent.cancel()
        await bounded(probe.cancelled.wait())
        assert await bounded(conn.request("add", [2, 2])) == 4  # the slot was given back
        assert conn.outgoing == 0
    with pytest.raises(Unavailable):
        conn.request_soon("add", [1, 1])


async def test_request_soon_cancelled_as_its_timeout_fires_still_tells_the_peer(
    server: RpcServer, sock_path: Path, probe: Probe
) -> None:
    loop = asyncio.get_running_loop()
    async with connect_unix(sock_path) as conn:
        t0 = loop.time()
        sent = conn.request_soon("block", timeout=0.2)
        assert sent is not None
        await bounded(probe.started.wait())
        # Hold the loop up past both, so that the cancellation and the timeout fall due in one
        # turn, the cancellation first.
        loop.call_at(t0 + 0.15, time.sleep, 0.1)
        loop.call_at(t0 + 0.19, sent.cancel)
        await bounded(probe.cancelled.wait())  # the peer was still told
        assert conn.outgoing == 0


async def test_request_soon_does_not_write_to_a_peer_that_is_not_reading() -> None:
    ours, theirs = socket.socketpair()
    me = PeerCred(pid=os.getpid(), uid=os.getuid(), gid=os.getgid())
    sent: list[asyncio.Future[Any]] = []
    try:
        async with Connection(ours, peer=me) as conn:
            conn.set_write_limits(high=1024, sndbuf=4096)
            while (fut := conn.request_soon("x", {"pad": "y" * 65536})) is not None:
                sent.append(fut)
                assert len(sent) < 64, "request_soon kept writing to a peer that never reads"
            assert sent  # it wrote until the transport filled, then declined
            assert conn.write_buffer_size > 1024
            assert conn.outgoing == len(sent)  # nothing was registered for the declined one
        await asyncio.gather(*sent, return_exceptions=True)
    finally:
        theirs.close()


async def test_request_timeout_is_a_timeout_and_other_cancellations_stay_cancellations(
    server: RpcServer, sock_path: Path, probe: Probe
) -> None:
    me = asyncio.current_task()
    assert me is not None
    async with connect_unix(sock_path) as conn:
        with pytest.raises(Timeout):
            await conn.request("block", timeout=0.05)
        assert me.cancelling() == 0  # the timeout took back the cancellation it made
        await bounded(probe.cancelled.wait())  # and the handler at the peer was cancelled
        probe.started.clear()
        task = asyncio.ensure_future(conn.request("block", timeout=30))
        await bounded(probe.started.wait())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await bounded(conn.request("add", [1, 2], timeout=5)) == 3
