"""Peers for the tests of :class:`libkiki.rpc.Connection` over real Unix sockets: a method table
with probes into its handlers, a server running it, and a raw client that speaks bytes."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import orjson

from libkiki.errors import (
    PermissionDenied,
)
from libkiki.rpc import Methods, RequestContext, connect_unix, serve_unix
from libkiki.rpc.server import RpcServer
from libkiki.sockets import bind_unix

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


@asynccontextmanager
async def running(path: Path, methods: Methods, **options: Any) -> AsyncIterator[RpcServer]:
    listener = bind_unix(path)
    try:
        async with serve_unix(listener, methods, **options) as server:
            yield server
    finally:
        listener.close()


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


def req(method: str, id: Any = 1, params: Any = None, **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id, **extra}
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
