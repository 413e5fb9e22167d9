"""A scripted JSON-RPC peer on a real Unix socket, standing in for the broker's side of issue
18's event streams (``kiki/subscribe``, ``kiki/event``, ..., ``kiki/openStream``, ...).

It writes and reads JSON lines itself (asyncio streams, no libkiki), so the tests of libkiki's
client and provider see bytes from an independent implementation, and can send what a faulty
broker would (a sequence number out of order, events in the same write as an answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson

# A request handler: its params -> its result; raising Refuse answers with an error instead.
Answer = Callable[[dict[str, Any]], Any]


class Refuse(Exception):
    """What a handler raises to answer with an error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Then:
    """A result followed, in the same write, by notifications (method, params)."""

    def __init__(self, result: Any, *notifications: tuple[str, dict[str, Any]]) -> None:
        self.result = result
        self.notifications = notifications


IGNORED = {"notifications/initialized"}


class PeerConnection:
    """One accepted connection: requests with a handler are answered, anything else is queued
    for the test (:meth:`expect`)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handlers: dict[str, Any]
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.handlers = handlers
        self.received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.closed = asyncio.Event()
        self._ids = itertools.count(1)
        self._answers: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while line := await self.reader.readline():
                message = orjson.loads(line)
                for one in message if isinstance(message, list) else [message]:
                    self._handle(one)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed.set()
            for fut in self._answers.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("the peer left"))

    def _handle(self, message: dict[str, Any]) -> None:
        method = message.get("method")
        if method is None:
            fut = self._answers.pop(message.get("id"), None)  # type: ignore[arg-type]
            if fut is not None and not fut.done():
                fut.set_result(message)
            return
        if method in IGNORED:
            return
        handler = self.handlers.get(method)
        if handler is None or "id" not in message:  # (a handler of None: the test answers)
            self.received.put_nowait(message)
            return
        lines = []
        try:
            result = handler(message.get("params") or {})
        except Refuse as refused:
            lines.append(
                {
                    "jsonrpc": "2.0",
                    "id": message["id"],
                    "error": {"code": refused.code, "message": refused.message},
                }
            )
        else:
            after: tuple[tuple[str, dict[str, Any]], ...] = ()
            if isinstance(result, Then):
                result, after = result.result, result.notifications
            lines.append({"jsonrpc": "2.0", "id": message["id"], "result": result})
            lines.extend({"jsonrpc": "2.0", "method": m, "params": p} for m, p in after)
        self.writer.write(b"".join(orjson.dumps(x) + b"\n" for x in lines))

    async def answer(self, rid: Any, result: Any) -> None:
        """Answer a request the test took with :meth:`expect` (its handler was None)."""
        self.writer.write(orjson.dumps({"jsonrpc": "2.0", "id": rid, "result": result}) + b"\n")
        await self.writer.drain()

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        self.writer.write(orjson.dumps({"jsonrpc": "2.0", "method": method, "params": params}))
        self.writer.write(b"\n")
        await self.writer.drain()

    async def notify_all(self, *notifications: tuple[str, dict[str, Any]]) -> None:
        """Several notifications in one write (what the broker does: one batch per drain)."""
        self.writer.write(
            orjson.dumps([{"jsonrpc": "2.0", "method": m, "params": p} for m, p in notifications])
            + b"\n"
        )
        await self.writer.drain()

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Send a request; the whole response message."""
        rid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._answers[rid] = fut
        line = orjson.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        self.writer.write(line + b"\n")
        await self.writer.drain()
        async with asyncio.timeout(10):
            return await fut

    async def expect(self, method: str) -> dict[str, Any]:
        """The next message received that no handler answered; it must be a ``method``."""
        async with asyncio.timeout(10):
            message = await self.received.get()
        assert message.get("method") == method, message
        return message

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def initialize(params: dict[str, Any]) -> dict[str, Any]:
    return {
        "protocolVersion": params.get("protocolVersion"),
        "capabilities": {"tools": {}},
        "serverInfo": {"name": "scripted-broker", "version": "0"},
    }


class ScriptedBroker:
    """Serves ``path``; each connection it accepts is put in :attr:`connections` in turn.

    ``handlers`` answer requests on every connection: ``initialize`` and ``kiki/registerTools``
    by default, ``kiki/subscribe`` with subscription ids 1, 2, ... (recorded in
    :attr:`subscribes`) and ``kiki/unsubscribe`` (recorded in :attr:`unsubscribes`).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.connections: asyncio.Queue[PeerConnection] = asyncio.Queue()
        self.subscribes: list[dict[str, Any]] = []
        self.unsubscribes: list[int] = []
        self.registrations: list[dict[str, Any]] = []
        self._sub_ids = itertools.count(1)
        self.handlers: dict[str, Any] = {
            "initialize": initialize,
            "kiki/registerTools": self._register,
            "kiki/subscribe": self._subscribe,
            "kiki/unsubscribe": self._unsubscribe,
        }
        self._all: list[PeerConnection] = []
        self._server: asyncio.Server | None = None

    def _register(self, params: dict[str, Any]) -> dict[str, Any]:
        self.registrations.append(params)
        return {}

    def _subscribe(self, params: dict[str, Any]) -> dict[str, Any]:
        self.subscribes.append(params)
        return {"subscription": next(self._sub_ids), "state": "live"}

    def _unsubscribe(self, params: dict[str, Any]) -> dict[str, Any]:
        self.unsubscribes.append(params["subscription"])
        return {}

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = PeerConnection(reader, writer, self.handlers)
        self._all.append(conn)
        await self.connections.put(conn)

    async def connection(self) -> PeerConnection:
        async with asyncio.timeout(10):
            return await self.connections.get()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[ScriptedBroker]:
        self._server = await asyncio.start_unix_server(self._accept, path=str(self.path))
        try:
            yield self
        finally:
            self._server.close()
            for conn in self._all:
                await conn.close()
            await self._server.wait_closed()
