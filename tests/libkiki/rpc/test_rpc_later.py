"""Answers that come later over real Unix sockets: a synchronous handler's Reply, requests sent
with Connection.request_now, after_input, and Connection.try_notify_many."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import orjson
import pytest

from kikitest.rpc_peers import bounded, raw, req, running
from libkiki.errors import PeerGone, PermissionDenied, Timeout, Unavailable
from libkiki.peer import PeerCred
from libkiki.rpc import (
    Connection,
    Methods,
    Reply,
    RequestContext,
    after_input,
    connect_unix,
)

pytestmark = pytest.mark.integration


class Handed:
    """What the server's handlers hand the test: each Reply with its request's connection."""

    def __init__(self) -> None:
        self.replies: asyncio.Queue[tuple[Reply, Connection]] = asyncio.Queue()
        self.cancelled: list[Reply] = []
        self.block = asyncio.Event()
        self.blocking = asyncio.Event()
        self.told = asyncio.Event()


def methods_for(handed: Handed) -> Methods:
    methods = Methods()

    @methods.sync("later")
    def later(ctx: RequestContext) -> Reply:
        reply = Reply()
        reply.on_cancel(lambda: handed.cancelled.append(reply))
        handed.replies.put_nowait((reply, ctx.connection))
        return reply

    @methods.sync("early")
    def early(ctx: RequestContext, x: int) -> Reply:
        reply = Reply()
        reply.set_result(x + 1)  # settled before the handler returns
        return reply

    @methods.sync("add")
    def add(ctx: RequestContext, a: int, b: int) -> int:
        return a + b

    @methods.method
    async def block(ctx: RequestContext) -> str:
        handed.blocking.set()
        try:
            await handed.block.wait()
        except asyncio.CancelledError:
            handed.told.set()
            raise
        return "unblocked"

    return methods


@pytest.fixture
def handed() -> Handed:
    return Handed()


async def test_a_reply_is_answered_in_the_call_that_settles_it(
    tmp_path: Path, handed: Handed
) -> None:
    path = tmp_path / "rpc.sock"
    async with running(path, methods_for(handed)), raw(path) as client:
        await client.send(req("later", 1))
        reply, conn = await bounded(handed.replies.get())
        assert conn.in_flight == 1
        reply.set_result({"x": 42})
        # Written and released right there: a future would be answered a turn later.
        assert conn.in_flight == 0
        assert await client.recv() == {"jsonrpc": "2.0", "result": {"x": 42}, "id": 1}
        await client.send(req("early", 2, {"x": 1}))
        assert await client.recv() == {"jsonrpc": "2.0", "result": 2, "id": 2}


async def test_a_replys_error_crosses_the_same_boundary_as_a_handlers(
    tmp_path: Path, handed: Handed, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "rpc.sock"
    async with running(path, methods_for(handed)), raw(path) as client:
        await client.send(req("later", 1))
        reply, _ = await bounded(handed.replies.get())
        reply.set_exception(PermissionDenied("no", data={"n": 1}))
        assert (await client.recv())["error"] == {"code": -32003, "message": "no", "data": {"n": 1}}
        await client.send(req("later", 2))
        reply, _ = await bounded(handed.replies.get())
        with caplog.at_level(logging.ERROR):
            reply.set_exception(RuntimeError("secret detail"))
        assert (await client.recv())["error"] == {"code": -32603, "message": "Internal error"}
        assert "secret detail" in caplog.text  # logged for us, not sent to the peer
        await client.send(req("later", 3))
        reply, _ = await bounded(handed.replies.get())
        with caplog.at_level(logging.ERROR):
            reply.set_result(object())  # not JSON: an internal error, as a handler's result
        assert (await client.recv())["error"]["code"] == -32603


async def test_a_reply_the_peer_cancels_is_never_answered_and_frees_its_slot(
    tmp_path: Path, handed: Handed
) -> None:
    path = tmp_path / "rpc.sock"
    async with running(path, methods_for(handed), max_in_flight=2), raw(path) as client:
        for i in range(3):  # a limit of 2 would refuse the third round if a slot were kept
            await client.send(req("later", f"c{i}"))
            reply, _ = await bounded(handed.replies.get())
            await client.send(
                {
                    "jsonrpc": "2.0",
                    "method": "notifications/cancelled",
                    "params": {"requestId": f"c{i}"},
                }
            )
            await client.send(req("add", f"a{i}", [i, 1]))
            assert await client.recv() == {"jsonrpc": "2.0", "result": i + 1, "id": f"a{i}"}
            assert reply.cancelled()
            assert handed.cancelled[-1] is reply
        # The peer leaving cancels a reply still pending.
        await client.send(req("later", 9))
        reply, conn = await bounded(handed.replies.get())
    await bounded(conn.wait_closed())
    assert reply.cancelled()
    assert handed.cancelled[-1] is reply


async def test_a_reply_behind_a_running_task_is_answered_through_a_task(
    tmp_path: Path, handed: Handed
) -> None:
    path = tmp_path / "rpc.sock"
    async with running(path, methods_for(handed)), raw(path) as client:
        await client.send(req("block", 1))
        await bounded(handed.blocking.wait())
        await client.send(req("later", 2))  # queued behind the task, in a task of its own
        reply, _ = await bounded(handed.replies.get())
        reply.set_result("late")
        assert await client.recv() == {"jsonrpc": "2.0", "result": "late", "id": 2}
        await client.send(req("later", 3))
        reply, _ = await bounded(handed.replies.get())
        await client.send(
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 3}}
        )
        handed.block.set()
        assert await client.recv() == {"jsonrpc": "2.0", "result": "unblocked", "id": 1}
        await client.send(req("add", 4, [1, 1]))
        assert (await client.recv())["id"] == 4  # 3 is never answered
        assert reply.cancelled()


async def test_a_draining_server_waits_for_pending_replies(tmp_path: Path, handed: Handed) -> None:
    path = tmp_path / "rpc.sock"
    async with AsyncExitStack() as client_side:  # the client outlives the server
        async with running(path, methods_for(handed), drain_timeout=1.0):
            client = await client_side.enter_async_context(raw(path))
            await client.send(req("later", 1))
            reply, _ = await bounded(handed.replies.get())
            # Settled while the server drains: the answer still goes out.
            asyncio.get_running_loop().call_later(0.05, reply.set_result, "drained")
        assert await client.recv() == {"jsonrpc": "2.0", "result": "drained", "id": 1}


# -- Connection.request_now ------------------------------------------------------------------


class Ends:
    """request_now's done callbacks, as a queue the test awaits."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[Any, BaseException | None]] = asyncio.Queue()

    def done(self, result: Any, error: BaseException | None) -> None:
        self.queue.put_nowait((result, error))

    async def next(self) -> tuple[Any, BaseException | None]:
        end: tuple[Any, BaseException | None] = await bounded(self.queue.get())
        return end


async def test_request_now_tells_its_result_and_typed_error(tmp_path: Path, handed: Handed) -> None:
    path = tmp_path / "rpc.sock"
    ends = Ends()
    async with running(path, methods_for(handed)), connect_unix(path) as conn:
        sent = conn.request_now("add", [1, 2], done=ends.done)
        assert sent is not None
        assert await ends.next() == (3, None)
        assert sent.done()
        assert conn.outgoing == 0
        sent = conn.request_now("nope", done=ends.done)
        assert sent is not None
        result, error = await ends.next()
        assert result is None
        assert error is not None
        assert getattr(error, "jsonrpc_code", 0) == -32601


async def test_request_now_times_out_and_cancels_at_the_peer(
    tmp_path: Path, handed: Handed
) -> None:
    path = tmp_path / "rpc.sock"
    ends = Ends()
    async with running(path, methods_for(handed)), connect_unix(path, max_in_flight=1) as conn:
        sent = conn.request_now("block", timeout=0.2, done=ends.done)
        assert sent is not None
        # The one slot is taken: nothing is sent, nothing registered.
        assert conn.request_now("add", [1, 1], done=ends.done) is None
        _, error = await ends.next()
        assert isinstance(error, Timeout)
        await bounded(handed.told.wait())  # notifications/cancelled reached the handler
        handed.told.clear()
        handed.blocking.clear()
        sent = conn.request_now("block", done=ends.done)
        assert sent is not None
        await bounded(handed.blocking.wait())
        assert sent.cancel()
        _, error = await ends.next()
        assert isinstance(error, asyncio.CancelledError)
        assert not sent.cancel()
        await bounded(handed.told.wait())
        assert await bounded(conn.request("add", [2, 2])) == 4  # the slot was given back
        assert conn.outgoing == 0
    with pytest.raises(Unavailable):
        conn.request_now("add", [1, 1], done=ends.done)


async def test_request_now_fails_with_the_connection(tmp_path: Path, handed: Handed) -> None:
    path = tmp_path / "rpc.sock"
    ends = Ends()
    async with AsyncExitStack() as client_side:  # the client outlives the server
        async with running(path, methods_for(handed)):
            conn = await client_side.enter_async_context(connect_unix(path))
            sent = conn.request_now("block", done=ends.done)
            assert sent is not None
            await bounded(handed.blocking.wait())
        _, error = await ends.next()  # the server left without answering
        assert isinstance(error, PeerGone)
        assert sent.done()
        assert conn.outgoing == 0


async def test_a_failing_done_callback_leaves_the_connection_working(
    tmp_path: Path, handed: Handed, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "rpc.sock"

    def broken(result: Any, error: BaseException | None) -> None:
        raise RuntimeError("done callback bug")

    async with running(path, methods_for(handed)), connect_unix(path) as conn:
        with caplog.at_level(logging.ERROR):
            assert conn.request_now("add", [1, 2], done=broken) is not None
            assert await bounded(conn.request("add", [2, 3])) == 5
        assert "done callback bug" in caplog.text
        assert not conn.closed


# -- after_input and try_notify_many ---------------------------------------------------------


async def test_after_input_runs_once_a_reads_notifications_are_handled(tmp_path: Path) -> None:
    path = tmp_path / "rpc.sock"
    seen: list[Any] = []
    flushed = asyncio.Event()
    methods = Methods()

    def flush() -> None:
        seen.append("flush")
        flushed.set()

    @methods.inline("note")
    def on_note(params: Any) -> None:
        seen.append(params["n"])
        after_input(flush)

    lines = b"".join(
        orjson.dumps({"jsonrpc": "2.0", "method": "note", "params": {"n": n}}) + b"\n"
        for n in range(3)
    )
    async with running(path, methods):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(os.fspath(path))  # the listener's backlog takes it: no wait
            # All three in one send, before the server has read anything: one read there.
            client.sendall(lines)
            await bounded(flushed.wait())
            assert seen == [0, 1, 2, "flush", "flush", "flush"]


async def test_try_notify_many_writes_now_or_not_at_all(tmp_path: Path) -> None:
    ours, theirs = socket.socketpair()
    me = PeerCred(pid=os.getpid(), uid=os.getuid(), gid=os.getgid())
    try:
        async with Connection(ours, peer=me) as conn:
            assert conn.try_notify_many([("a", {"n": 1}), ("b", None)])
            theirs.setblocking(False)
            got = theirs.recv(4096).splitlines()
            assert [orjson.loads(line) for line in got] == [
                {"jsonrpc": "2.0", "method": "a", "params": {"n": 1}},
                {"jsonrpc": "2.0", "method": "b"},
            ]
            conn.set_write_limits(high=1 << 20, sndbuf=4096)
            while conn.try_notify_many([("pad", {"pad": "x" * 4096})]):
                pass  # the peer stops reading: the kernel fills, then the transport holds bytes
            held = conn.write_buffer_size
            assert held
            assert not conn.try_notify_many([("c", None)])
            assert conn.write_buffer_size == held  # nothing queued behind
            theirs.close()
    finally:
        theirs.close()
    assert not conn.try_notify_many([("d", None)])  # closed
