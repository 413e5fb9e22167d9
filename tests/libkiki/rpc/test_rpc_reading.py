"""The read side (libkiki.rpc.reading): what a peer writes, well-formed or not, read off a real
Unix socket and decoded, answered where the spec says, without ending the connection."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from kikitest.rpc_peers import Probe, bounded, make_methods, note, raw, req, running
from libkiki.rpc.server import RpcServer

pytestmark = pytest.mark.integration


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
