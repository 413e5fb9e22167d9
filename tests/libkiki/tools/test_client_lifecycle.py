"""libkiki.tools.client: a ToolClient's connection lifecycle, against a fake broker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from libkiki.errors import KikiError
from libkiki.tools import ToolClient

pytestmark = pytest.mark.integration

Answer = Callable[[asyncio.StreamWriter, dict[str, Any]], Awaitable[None]]


class FakeBroker:
    """A Unix socket server that hands each ``initialize`` to ``answer`` and notes when the
    client closes its end: what is tested is the client's own socket, not the broker."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.initialize = asyncio.Event()  # the client's initialize request arrived
        self.eof = asyncio.Event()  # the client closed its socket

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = json.loads(await reader.readline())
        assert request["method"] == "initialize"
        self.initialize.set()
        await self.answer(writer, request)
        while await reader.read(65536):
            pass
        self.eof.set()
        writer.close()


@pytest.fixture
async def fake_broker(sockdir: Path) -> AsyncIterator[Callable[[Answer], Awaitable[FakeBroker]]]:
    servers: list[asyncio.Server] = []

    async def start(answer: Answer) -> FakeBroker:
        fake = FakeBroker(answer)
        servers.append(await asyncio.start_unix_server(fake.handle, sockdir / "fake.sock"))
        return fake

    yield start
    for server in servers:
        server.close()


async def refuse(writer: asyncio.StreamWriter, request: dict[str, Any]) -> None:
    error = {"code": -32603, "message": "no initialize today"}
    writer.write(json.dumps({"jsonrpc": "2.0", "id": request["id"], "error": error}).encode())
    writer.write(b"\n")
    await writer.drain()


async def accept(writer: asyncio.StreamWriter, request: dict[str, Any]) -> None:
    result = {"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "f"}}
    writer.write(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}).encode())
    writer.write(b"\n")
    await writer.drain()


async def never(writer: asyncio.StreamWriter, request: dict[str, Any]) -> None:
    pass


async def test_a_failed_enter_closes_the_client_connection(
    fake_broker: Callable[[Answer], Awaitable[FakeBroker]], sockdir: Path
) -> None:
    fake = await fake_broker(refuse)
    client = ToolClient(sockdir / "fake.sock")
    async with asyncio.timeout(10):
        with pytest.raises(KikiError, match="no initialize today"):
            async with client:
                pass
        await fake.eof.wait()
    with pytest.raises(KikiError, match="not connected"):
        _ = client.connection


async def test_a_cancelled_enter_closes_the_client_connection(
    fake_broker: Callable[[Answer], Awaitable[FakeBroker]], sockdir: Path
) -> None:
    fake = await fake_broker(never)
    client = ToolClient(sockdir / "fake.sock")
    async with asyncio.timeout(10):
        enter = asyncio.create_task(client.__aenter__())
        await fake.initialize.wait()
        enter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await enter
        await fake.eof.wait()
    with pytest.raises(KikiError, match="not connected"):
        _ = client.connection


async def test_a_closed_client_is_not_connected(
    fake_broker: Callable[[Answer], Awaitable[FakeBroker]], sockdir: Path
) -> None:
    await fake_broker(accept)
    client = ToolClient(sockdir / "fake.sock")
    async with asyncio.timeout(10), client:
        assert not client.connection.closed
    with pytest.raises(KikiError, match="not connected"):
        _ = client.connection
