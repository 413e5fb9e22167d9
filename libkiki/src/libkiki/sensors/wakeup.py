"""The reader's side of the notify socket: JSON-RPC 2.0 with a fast path for wake-ups.

:class:`libkiki.rpc.Connection` runs every incoming notification through jsonrpcserver in a
task of its own: right for methods, about 100 us too slow for a wake-up that should reach a
blocked reader within 100 us. A :class:`WakeChannel` is a small client for the same wire
protocol (one JSON text per line): requests get futures matched by id, ``sensors/wake`` and
``sensors/gone`` are handled in ``data_received`` itself, and anything else the publisher might
send is ignored. It is used by :class:`~libkiki.sensors.client.SensorReader` only.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import orjson

from libkiki.errors import PeerGone, Timeout, Unavailable, error_for_code
from libkiki.framing import LineDecoder, Oversized

WAKE = b"sensors/wake"
GONE = b"sensors/gone"
_MAX_LINE = 1 << 20


class WakeChannel(asyncio.Protocol):
    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.indices: dict[str, int] = {}
        self.gone: set[str] = set()
        self.closed = False
        self._decoder = LineDecoder(_MAX_LINE)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 1
        self._transport: asyncio.Transport | None = None

    @classmethod
    async def connect(cls, path: str | os.PathLike[str]) -> WakeChannel:
        loop = asyncio.get_running_loop()
        try:
            _, channel = await loop.create_unix_connection(cls, os.fspath(path))
        except OSError as exc:
            raise Unavailable(f"cannot connect to {os.fspath(path)}: {exc.strerror}") from exc
        return channel

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        for line in self._decoder.feed(data):
            if isinstance(line, Oversized):
                continue
            # Wake-ups are most of the traffic: recognise them before parsing anything else.
            if WAKE in line[:64]:
                try:
                    self.indices.update(orjson.loads(line)["params"]["upTo"])
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    continue
                self.wake.set()
                continue
            try:
                message = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(message, dict):
                continue
            if message.get("method") == GONE.decode():
                sensor = (message.get("params") or {}).get("sensor")
                if isinstance(sensor, str):
                    self.gone.add(sensor)
                    self.wake.set()
                continue
            fut = self._pending.pop(message.get("id"), None)  # type: ignore[arg-type]
            if fut is None or fut.done():
                continue
            if "error" in message and isinstance(message["error"], dict):
                err = message["error"]
                fut.set_exception(
                    error_for_code(err.get("code", -32603), err.get("message", ""), err.get("data"))
                )
            else:
                fut.set_result(message.get("result"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(PeerGone())
        self._pending.clear()
        self.wake.set()

    async def request(self, method: str, params: dict[str, Any], timeout: float = 10.0) -> Any:  # noqa: ASYNC109
        if self.closed or self._transport is None:
            raise PeerGone()
        rid = self._next_id
        self._next_id += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        line = orjson.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        self._transport.write(line + b"\n")
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            raise Timeout(f"no answer to {method} within {timeout} s") from None
        finally:
            self._pending.pop(rid, None)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


__all__ = ["WakeChannel"]
