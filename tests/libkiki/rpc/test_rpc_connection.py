"""The JSON-RPC connection, server and client over real Unix sockets in tmp_path."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import orjson
import pytest

from libkiki.errors import (
    LimitExceeded,
    MethodNotFound,
    PeerGone,
    PermissionDenied,
    Timeout,
    Unavailable,
)
from libkiki.peer import PeerCred
from libkiki.rpc import Call, Connection, Methods, RequestContext, connect_unix, serve_unix
from libkiki.rpc.server import RpcServer
from libkiki.sockets import bind_unix

pytestmark = pytest.mark.integration

BOUND = 5.0  # every wait in this module is bounded by this


class Probe:
    """Lets a test see inside the server's handlers without sleeping."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.release = asyncio.Event()
        self.notes: asyncio.Queue[Any] = asyncio.Queue()
        self.contexts: list[RequestContext] = []


def make_methods(probe: Probe) -> Methods:
    methods = Methods()

    @methods.method
    async def add(ctx: RequestContext, a: int, b: int) -> int:
        return a + b

    @methods.method
    async def whoami(ctx: RequestContext) -> dict[str, Any]:
        probe.contexts.append(ctx)
        return {"uid": ctx.peer.uid, "pid": ctx.peer.pid, "id": ctx.request_id}

    @methods.method
    async def denied(ctx: RequestContext) -> None:
        raise PermissionDenied("not for you", data={"tool": "x"})

    @methods.method
    async def crash(ctx: RequestContext) -> None:
        raise RuntimeError("secret detail /var/lib/kiki/key")

    @methods.method
    async def unserialisable(ctx: RequestContext) -> object:
        return object()

    @methods.method
    async def block(ctx: RequestContext) -> str:
        probe.started.set()
        try:
            await probe.release.wait()
        except asyncio.CancelledError:
            probe.cancelled.set()
            raise
        return "released"

    @methods.method
    async def until_closing(ctx: RequestContext) -> str:
        probe.started.set()
        await ctx.connection.wait_closing()
        return "finished while draining"

    @methods.method
    async def record(ctx: RequestContext, value: Any) -> None:
        await probe.notes.put(value)

    @methods.method
    async def ask_back(ctx: RequestContext, x: int) -> Any:
        return await ctx.connection.request("client.double", [x])

    @methods.method
    async def tell_back(ctx: RequestContext, text: str) -> str:
        await ctx.connection.notify("client.note", {"text": text})
        return "told"

    @methods.method("work/steps")
    async def steps(ctx: RequestContext, n: int) -> int:
        for i in range(n):
            await ctx.progress(i + 1, total=n, message=f"step {i + 1}")
        return n

    @methods.method
    async def big(ctx: RequestContext, n: int) -> str:
        return "x" * n

    @methods.method
    async def hang_up(ctx: RequestContext) -> None:
        await ctx.connection.close()

    return methods


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "rpc.sock"


@asynccontextmanager
async def running(path: Path, methods: Methods, **options: Any) -> AsyncIterator[RpcServer]:
    listener = bind_unix(path)
    try:
        async with serve_unix(listener, methods, **options) as server:
            yield server
    finally:
        listener.close()


@pytest.fixture
async def server(sock_path: Path, probe: Probe) -> AsyncIterator[RpcServer]:
    async with running(sock_path, make_methods(probe)) as srv:
        yield srv


class Raw:
    """A client that speaks bytes, to check the wire exactly."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes | dict[str, Any] | list[Any]) -> None:
        if not isinstance(data, bytes):
            data = orjson.dumps(data) + b"\n"
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self) -> Any:
        async with asyncio.timeout(BOUND):
            data = await self.reader.readline()
        assert data.endswith(b"\n"), f"connection ended: {data!r}"
        return orjson.loads(data)

    async def call(self, message: dict[str, Any] | list[Any] | bytes) -> Any:
        await self.send(message)
        return await self.recv()

    async def eof(self) -> bool:
        async with asyncio.timeout(BOUND):
            try:
                return await self.reader.read() == b""
            except ConnectionResetError:
                return True

    async def close(self) -> None:
        self.writer.close()
        with suppress(OSError):
            await self.writer.wait_closed()


@asynccontextmanager
async def raw(path: Path, limit: int = 2**22) -> AsyncIterator[Raw]:
    async with asyncio.timeout(BOUND):
        reader, writer = await asyncio.open_unix_connection(os.fspath(path), limit=limit)
    client = Raw(reader, writer)
    try:
        yield client
    finally:
        await client.close()


def req(method: str, id: Any = 1, params: Any = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id}
    if params is not None:
        message["params"] = params
    return message


def note(method: str, params: Any = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    return message


async def bounded(aw: Any) -> Any:
    async with asyncio.timeout(BOUND):
        return await aw


# -- requests, ids, notifications ---------------------------------------------------------------


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


# -- every standard error in its place ---------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "code", "rid"),
    [
        (b"{not json\n", -32700, None),
        (b'{"jsonrpc": "2.0", "method": "add", "id": 1\n', -32700, None),
        (b"\x00\xff\xfe garbage\n", -32700, None),
        ({"jsonrpc": "1.0", "method": "add", "id": 4}, -32600, 4),
        ({"method": "add", "id": 4}, -32600, 4),
        ({"jsonrpc": "2.0", "method": "add", "params": "1,2", "id": 5}, -32600, 5),
        ({"jsonrpc": "2.0", "method": 7, "id": True}, -32600, None),
        (b"42\n", -32600, None),
        (b"[]\n", -32600, None),
        (req("nope", 8), -32601, 8),
        (req("add", 9, [1]), -32602, 9),
        (req("add", 10, [1, 2, 3]), -32602, 10),
        (req("add", 11, {"a": 1, "c": 2}), -32602, 11),
        (req("crash", 12), -32603, 12),
    ],
)
async def test_standard_errors_where_the_spec_puts_them(
    server: RpcServer, sock_path: Path, message: Any, code: int, rid: Any
) -> None:
    async with raw(sock_path) as client:
        response = await client.call(message)
        assert isinstance(response, dict)
        assert response["jsonrpc"] == "2.0"
        assert response["error"]["code"] == code
        assert response["id"] == rid
        # and the connection carries on
        assert (await client.call(req("add", "after", [1, 2])))["result"] == 3


async def test_batch_of_invalid_entries_is_an_array_of_errors(
    server: RpcServer, sock_path: Path
) -> None:
    async with raw(sock_path) as client:
        errors = await client.call([1, 2, 3])
        assert [(e["error"]["code"], e["id"]) for e in errors] == [(-32600, None)] * 3


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


# -- framing and bad input --------------------------------------------------------------------


async def test_oversized_line_then_a_good_request_on_the_same_connection(
    sock_path: Path, probe: Probe
) -> None:
    async with (
        running(sock_path, make_methods(probe), max_line=1024) as srv,
        raw(sock_path) as client,
    ):
        big = orjson.dumps(req("record", 1, ["x" * 5000])) + b"\n"
        error = await client.call(big)
        assert error["id"] is None
        assert error["error"]["code"] == -32600
        assert "exceeds the limit of 1024 bytes" in error["error"]["message"]
        assert (await client.call(req("add", 2, [2, 2])))["result"] == 4
        assert srv.counters["errors"] >= 1


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


async def test_garbage_then_a_good_request(server: RpcServer, sock_path: Path) -> None:
    async with raw(sock_path) as client:
        await client.send(os.urandom(64).replace(b"\n", b"") + b"\n")
        assert (await client.recv())["error"]["code"] == -32700
        assert (await client.call(req("add", 1, [1, 2])))["result"] == 3


async def test_fuzzed_lines_then_the_connection_still_answers(
    server: RpcServer, sock_path: Path
) -> None:
    rng = random.Random(1234)
    pieces = [
        b"{",
        b"}",
        b"[",
        b"]",
        b'"jsonrpc"',
        b'"2.0"',
        b'"method"',
        b'"id"',
        b":",
        b",",
        b"1",
    ]
    lines = []
    for _ in range(500):
        if rng.random() < 0.5:
            lines.append(bytes(rng.getrandbits(8) for _ in range(rng.randrange(40))))
        else:
            lines.append(b"".join(rng.choice(pieces) for _ in range(rng.randrange(12))))
    async with raw(sock_path) as client:
        await client.send(b"".join(line.replace(b"\n", b"") + b"\n" for line in lines))
        await client.send(req("add", "canary", [20, 22]))
        while (response := await client.recv()) and (
            not isinstance(response, dict) or response.get("id") != "canary"
        ):
            pass
        assert response["result"] == 42


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


async def test_server_counts_requests_notifications_and_errors(
    server: RpcServer, sock_path: Path, probe: Probe
) -> None:
    async with raw(sock_path) as client:
        await client.call(req("add", 1, [1, 1]))
        await client.call(req("nope", 2))
        await client.call(b"garbage\n")
        await client.send(note("record", [0]))
        await bounded(probe.notes.get())
    assert server.counters["requests"] == 2
    assert server.counters["notifications"] == 1
    assert server.counters["errors"] == 2
    assert server.counters["connections_accepted"] == 1


async def test_response_to_unknown_id_is_logged_and_ignored(
    server: RpcServer, sock_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="libkiki.rpc")
    async with raw(sock_path) as client:
        await client.send({"jsonrpc": "2.0", "result": "stray", "id": 999})
        assert (await client.call(req("add", 1, [1, 2])))["result"] == 3
    assert "unknown id 999" in caplog.text


# -- both directions ---------------------------------------------------------------------------


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


# -- timeouts and cancellation -----------------------------------------------------------------


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


# -- limits -------------------------------------------------------------------------------------


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


# -- peers that vanish --------------------------------------------------------------------------


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


async def test_connect_to_nothing_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="cannot connect"):
        async with connect_unix(tmp_path / "absent.sock"):
            pass


# -- shutting down ------------------------------------------------------------------------------


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
    from libkiki.peer import PeerCred
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
async def connect_unix_raw(
    path: Path, listener: socket.socket, peers: list[socket.socket]
) -> AsyncIterator[Any]:
    """A client connection whose server end is a plain socket that the test reads by hand."""
    async with connect_unix(path) as conn:
        peer, _ = await asyncio.get_running_loop().sock_accept(listener)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        peers.append(peer)
        yield conn


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


# -- synchronous handlers -----------------------------------------------------------------------


def sync_methods(probe: Probe) -> Methods:
    methods = make_methods(probe)

    @methods.sync("now/add")
    def add_now(ctx: RequestContext, a: int, b: int) -> dict[str, Any]:
        return {"sum": a + b, "task": asyncio.current_task() is not None}

    @methods.sync("now/denied")
    def denied_now(ctx: RequestContext) -> None:
        raise PermissionDenied("not for you", data={"tool": "x"})

    @methods.sync("now/crash")
    def crash_now(ctx: RequestContext) -> None:
        raise RuntimeError("secret detail /var/lib/kiki/key")

    @methods.sync("now/big")
    def big_now(ctx: RequestContext, n: int) -> str:
        return "x" * n

    @methods.sync("now/later")
    def later(ctx: RequestContext, x: int) -> Any:
        async def rest() -> int:
            probe.started.set()
            try:
                await probe.release.wait()
            except asyncio.CancelledError:
                probe.cancelled.set()
                raise
            return x * 2

        coro = rest()
        probe.contexts.append(ctx)
        probe.notes.put_nowait(coro)
        return coro

    @methods.sync("now/future")
    def future(ctx: RequestContext) -> asyncio.Future[Any]:
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        probe.notes.put_nowait(answer)  # the test settles it
        return answer

    return methods


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


async def test_server_exit_drains_a_sync_handlers_future(sock_path: Path, probe: Probe) -> None:
    async with AsyncExitStack() as client_side:
        async with running(sock_path, sync_methods(probe), drain_timeout=BOUND):
            conn = await client_side.enter_async_context(connect_unix(sock_path))
            call = asyncio.create_task(conn.request("now/future"))
            answer = await bounded(probe.notes.get())
            # Settled while the server drains: the answer still goes out.
            asyncio.get_running_loop().call_later(0.05, answer.set_result, "drained")
        assert await bounded(call) == "drained"


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
    assert "x" not in methods._sync


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
