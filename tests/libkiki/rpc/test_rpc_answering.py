"""The peer's requests (libkiki.rpc.answering): handlers run, in tasks or synchronously as read,
cancelled, bounded, and answered, over real Unix sockets."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from kikitest.rpc_peers import Probe, bounded, make_methods, note, raw, req, running, sync_methods
from libkiki.errors import (
    LimitExceeded,
    PermissionDenied,
    Timeout,
)
from libkiki.peer import PeerCred
from libkiki.rpc import Methods, RequestContext, connect_unix
from libkiki.rpc.server import RpcServer

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("rid", [1, 0, "a-string", 2**40])
async def test_request_response_with_string_and_number_ids(
    server: RpcServer, sock_path: Path, rid: Any
) -> None:
    async with raw(sock_path) as client:
        assert await client.call(req("add", rid, [2, 3])) == {
            "jsonrpc": "2.0",
            "result": 5,
            "id": rid,
        }
        named = await client.call(req("add", rid, {"a": 1, "b": 1}))
        assert named["result"] == 2


async def test_handler_sees_the_peer_credentials(server: RpcServer, sock_path: Path) -> None:
    async with connect_unix(sock_path) as conn:
        who = await bounded(conn.request("whoami"))
    assert (who["uid"], who["pid"]) == (os.getuid(), os.getpid())
    assert conn.peer.pid == os.getpid()  # the client knows the server the same way


async def test_notifications_run_but_are_never_answered(
    server: RpcServer, sock_path: Path, probe: Probe
) -> None:
    async with raw(sock_path) as client:
        await client.send(note("record", ["hello"]))
        await client.send(note("no-such-method"))
        await client.send(note("add", ["wrong arity"]))
        await client.send(note("crash"))
        assert await bounded(probe.notes.get()) == "hello"
        assert await client.call(req("add", 7, [1, 1])) == {"jsonrpc": "2.0", "result": 2, "id": 7}


async def test_batch_mixing_good_and_bad_entries(server: RpcServer, sock_path: Path) -> None:
    async with raw(sock_path) as client:
        batch = [
            req("add", 1, [1, 2]),
            note("record", ["x"]),
            {"foo": "bar"},
            req("nope", "two"),
            req("add", 3, [1]),
            req("denied", 4),
        ]
        responses = await client.call(batch)
        assert len(responses) == 5  # no entry for the notification
        by_id = {r["id"]: r for r in responses if r["id"] is not None}
        assert by_id[1]["result"] == 3
        assert by_id["two"]["error"]["code"] == -32601
        assert by_id[3]["error"]["code"] == -32602
        assert by_id[4]["error"]["code"] == -32003
        assert [r["error"]["code"] for r in responses if r["id"] is None] == [-32600]


async def test_batch_of_only_notifications_gets_no_output(
    server: RpcServer, sock_path: Path, probe: Probe
) -> None:
    async with raw(sock_path) as client:
        await client.send([note("record", [1]), note("record", [2])])
        assert {await bounded(probe.notes.get()), await bounded(probe.notes.get())} == {1, 2}
        assert (await client.call(req("add", "next", [0, 0])))["id"] == "next"


async def test_kiki_error_keeps_its_code_message_and_data(
    server: RpcServer, sock_path: Path
) -> None:
    async with raw(sock_path) as client:
        response = await client.call(req("denied", 1))
    assert response["error"] == {"code": -32003, "message": "not for you", "data": {"tool": "x"}}
    async with connect_unix(sock_path) as conn:
        with pytest.raises(PermissionDenied, match="not for you"):
            await bounded(conn.request("denied"))


async def test_unexpected_exception_is_internal_error_without_detail_and_logged(
    server: RpcServer, sock_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="libkiki.rpc")
    async with raw(sock_path) as client:
        response = await client.call(req("crash", 1))
        unserialisable = await client.call(req("unserialisable", 2))
    assert response["error"] == {"code": -32603, "message": "Internal error"}
    assert unserialisable["error"] == {"code": -32603, "message": "Internal error"}
    crash = [r for r in caplog.records if "crash" in r.getMessage()]
    assert crash
    assert crash[0].exc_info is not None
    assert crash[0].exc_info[0] is RuntimeError
    assert "secret detail" in caplog.text  # in our log, never on the wire


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_an_answer_over_the_line_limit_is_an_error_at_once(
    sock_path: Path, probe: Probe, kind: str
) -> None:
    # Sent, the peer (the default limit) would drop it and wait for an answer that never comes.
    method = "big" if kind == "async" else "now/big"
    limit = 1 << 20
    async with (
        running(sock_path, sync_methods(probe)) as srv,
        connect_unix(sock_path, request_timeout=None) as conn,
    ):
        assert len(await bounded(conn.request(method, [limit - 100]))) == limit - 100
        with pytest.raises(LimitExceeded) as caught:
            await bounded(conn.request(method, [limit]))
        assert f"over the line limit of {limit} bytes" in caught.value.message
        assert caught.value.data["limit"] == limit
        assert caught.value.data["size"] > limit
        assert srv.counters["errors"] == 1
        # Our own request over the limit is refused here: nothing is sent, nothing is pending.
        with pytest.raises(LimitExceeded):
            await conn.request("add", ["x" * limit, 1])
        with pytest.raises(LimitExceeded):
            await conn.notify("record", ["x" * limit])
        assert await bounded(conn.request("add", [1, 2])) == 3
        assert conn.outgoing == 0


async def test_cancelled_notification_cancels_the_handler_and_suppresses_its_response(
    server: RpcServer, sock_path: Path, probe: Probe
) -> None:
    async with raw(sock_path) as client:
        await client.send(req("block", "slow"))
        await bounded(probe.started.wait())
        await client.send(note("notifications/cancelled", {"requestId": "slow", "reason": "bored"}))
        await bounded(probe.cancelled.wait())
        # the next line is the answer to the next request: nothing was sent for "slow"
        assert await client.call(req("add", "next", [1, 2])) == {
            "jsonrpc": "2.0",
            "result": 3,
            "id": "next",
        }


async def test_a_request_cancelled_before_its_task_starts_frees_its_slot(
    sock_path: Path, probe: Probe
) -> None:
    async with running(sock_path, make_methods(probe), max_in_flight=2), raw(sock_path) as client:
        for i in range(3):
            # The request and its cancellation in one read: its task is cancelled before it
            # ever runs, and must still give its in-flight slot back. Nothing is answered for
            # it; the next call is (a limit of 2 would refuse it by the second round if the
            # cancelled requests kept their slots).
            await client.send(
                orjson.dumps(req("block", f"c{i}"))
                + b"\n"
                + orjson.dumps(note("notifications/cancelled", {"requestId": f"c{i}"}))
                + b"\n"
            )
            assert await client.call(req("add", f"a{i}", [i, 1])) == {
                "jsonrpc": "2.0",
                "result": i + 1,
                "id": f"a{i}",
            }
        # In a batch, the cancelled entry is left out and the others are still answered.
        await client.send(
            orjson.dumps([req("block", "b1"), req("add", "b2", [2, 2])])
            + b"\n"
            + orjson.dumps(note("notifications/cancelled", {"requestId": "b1"}))
            + b"\n"
        )
        assert await client.recv() == [{"jsonrpc": "2.0", "result": 4, "id": "b2"}]
        assert not probe.started.is_set()


async def test_incoming_in_flight_limit_answers_limit_exceeded(
    sock_path: Path, probe: Probe
) -> None:
    async with running(sock_path, make_methods(probe), max_in_flight=2), raw(sock_path) as client:
        await client.send(req("block", 1))
        await client.send(req("block", 2))
        refused = await client.call(req("add", 3, [1, 1]))
        assert (refused["id"], refused["error"]["code"]) == (3, -32005)
        probe.release.set()
        answers = {(await client.recv())["id"], (await client.recv())["id"]}
        assert answers == {1, 2}
        assert (await client.call(req("add", 4, [1, 1])))["result"] == 2


@pytest.mark.parametrize(
    "params",
    [
        {"a": 1, "b": 2},
        [1, 2],
        [1],
        [1, 2, 3],
        {"a": 1},
        {"a": 1, "b": 2, "c": 3},
        {"ctx": 1, "a": 1, "b": 2},
        [],
        {},
    ],
)
async def test_the_direct_call_agrees_with_jsonrpcserver(params: Any) -> None:
    # dispatch() calls a handler with plain parameters itself when the params certainly bind,
    # and leaves everything else to jsonrpcserver: both routes must answer alike.
    from libkiki.rpc.methods import dispatch

    fast, slow = Methods(), Methods()
    for table in (fast, slow):

        @table.method
        async def add(ctx: RequestContext, a: int, b: int = 10) -> int:
            return a + b

    slow._shapes["add"] = None  # force the jsonrpcserver route
    message = {"jsonrpc": "2.0", "id": 7, "method": "add", "params": params}
    ctx = RequestContext(None, PeerCred(os.getpid(), 0, 0), "add", 7, False)  # type: ignore[arg-type]
    answers = [orjson.loads(orjson.dumps(await dispatch(m, ctx, message))) for m in (fast, slow)]
    assert answers[0] == answers[1]
    assert ("result" in answers[0]) == (params in ({"a": 1, "b": 2}, [1, 2], [1], {"a": 1}))


async def test_inline_notifications_run_as_they_are_read_in_order(
    server: RpcServer, sock_path: Path
) -> None:
    seen: list[Any] = []
    methods = Methods()

    @methods.inline("client.note")
    def note_seen(params: Any) -> None:
        seen.append(params["text"])
        if params["text"] == "boom":
            raise RuntimeError("an inline handler failing is logged, the connection lives")

    async with connect_unix(sock_path, methods) as conn:
        for text in ("a", "boom", "b", "c"):
            assert await bounded(conn.request("tell_back", {"text": text})) == "told"
        assert seen == ["a", "boom", "b", "c"]  # each ran before the answer that followed it
        # Inline handlers are for notifications only: a request for one is an unknown method.
        assert "client.note" not in methods


async def test_sync_handlers_answer_as_read_with_the_same_error_boundary(
    sock_path: Path, probe: Probe, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(sock_path, sync_methods(probe)), raw(sock_path) as client:
        reply = await client.call(req("now/add", 1, [2, 3]))
        assert reply == {"jsonrpc": "2.0", "result": {"sum": 5, "task": False}, "id": 1}
        reply = await client.call(req("now/add", 2, {"a": 2, "b": 3}))
        assert reply["result"]["sum"] == 5
        reply = await client.call(req("now/denied", 3))
        assert reply["error"] == {"code": -32003, "message": "not for you", "data": {"tool": "x"}}
        with caplog.at_level(logging.ERROR):
            reply = await client.call(req("now/crash", 4))
        assert reply["error"] == {"code": -32603, "message": "Internal error"}
        assert "secret detail" in caplog.text  # logged for us, not sent to the peer
        # Params that do not bind take jsonrpcserver's route, with its answer.
        reply = await client.call(req("now/add", 5, {"a": 1}))
        assert reply["error"]["code"] == -32602
        # A notification for a synchronous handler runs (in a task) and is not answered.
        await client.send(note("now/add", [1, 1]))
        assert (await client.call(req("now/add", 6, [1, 1])))["id"] == 6


async def test_sync_handler_answers_leave_in_request_order(sock_path: Path, probe: Probe) -> None:
    async with running(sock_path, sync_methods(probe)), raw(sock_path) as client:
        # The first goes to a task (its params take jsonrpcserver's route); the second could be
        # answered as read, but an answer needing no wait must not overtake the one before it.
        await client.send(
            orjson.dumps(req("add", 1, {"a": 1}))
            + b"\n"
            + orjson.dumps(req("now/add", 2, [1, 2]))
            + b"\n"
        )
        first, second = await client.recv(), await client.recv()
        assert (first["id"], first["error"]["code"]) == (1, -32602)
        assert second == {"jsonrpc": "2.0", "result": {"sum": 3, "task": True}, "id": 2}


async def test_sync_handler_rest_runs_in_a_task_and_can_be_cancelled(
    sock_path: Path, probe: Probe
) -> None:
    async with running(sock_path, sync_methods(probe)), connect_unix(sock_path) as conn:
        call = asyncio.ensure_future(conn.request("now/later", [21]))
        await bounded(probe.started.wait())
        probe.release.set()
        assert await bounded(call) == 42
        probe.release.clear()
        probe.started.clear()
        with pytest.raises(Timeout):
            await conn.request("now/later", [1], timeout=0.2)
        await bounded(probe.cancelled.wait())  # the caller's timeout cancelled the rest


async def test_sync_handler_rest_cancelled_before_it_starts_is_closed(
    sock_path: Path, probe: Probe
) -> None:
    async with running(sock_path, sync_methods(probe)) as srv, raw(sock_path) as client:
        # The request and its cancellation in one read: the rest never starts, and is closed
        # rather than left for the garbage collector to warn about.
        await client.send(
            orjson.dumps(req("now/later", 9, [1]))
            + b"\n"
            + orjson.dumps(note("notifications/cancelled", {"requestId": 9}))
            + b"\n"
        )
        coro = await bounded(probe.notes.get())
        assert (await client.call(req("now/add", 10, [1, 1])))["id"] == 10  # 9 is never answered
        assert coro.cr_frame is None  # closed
        assert not probe.started.is_set()
        assert srv.counters["requests"] == 2


async def test_a_sync_handlers_future_is_answered_when_done_without_a_task(
    sock_path: Path, probe: Probe
) -> None:
    async with running(sock_path, sync_methods(probe), max_in_flight=2), raw(sock_path) as client:
        await client.send(req("now/future", 1))
        answer = await bounded(probe.notes.get())
        assert (await client.call(req("now/add", 2, [1, 1])))["result"] == {"sum": 2, "task": False}
        answer.set_result({"x": 42})
        assert await client.recv() == {"jsonrpc": "2.0", "result": {"x": 42}, "id": 1}
        await client.send(req("now/future", 3))
        (await bounded(probe.notes.get())).set_exception(PermissionDenied("no", data={"n": 1}))
        assert (await client.recv())["error"] == {"code": -32003, "message": "no", "data": {"n": 1}}
        # Cancelled by the peer: the future is cancelled, nothing is answered, and the slot is
        # given back (a limit of 2 would refuse the third round otherwise).
        for i in range(3):
            await client.send(req("now/future", f"c{i}"))
            answer = await bounded(probe.notes.get())
            await client.send(note("notifications/cancelled", {"requestId": f"c{i}"}))
            assert (await client.call(req("now/add", f"a{i}", [i, 1])))["id"] == f"a{i}"
            assert answer.cancelled()
        # The peer leaving cancels what is still pending.
        await client.send(req("now/future", 4))
        answer = await bounded(probe.notes.get())
        await client.close()
        with pytest.raises(asyncio.CancelledError):
            await bounded(answer)


def test_sync_and_async_registration_are_not_mixed_up() -> None:
    methods = Methods()

    async def a(ctx: RequestContext) -> None:
        return None

    def s(ctx: RequestContext) -> None:
        return None

    with pytest.raises(TypeError, match="must be a plain function"):
        methods.register_sync("a", a)
    with pytest.raises(TypeError, match="must be an async function"):
        methods.register("s", s)  # type: ignore[arg-type]
    methods.register_sync("x", s)
    methods.register("x", a)  # replaced by an async handler: no longer answered as read
    assert "x" in methods
    assert methods.sync_handler("x") is None
