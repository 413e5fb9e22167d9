"""Asking each service for its health, each on its own channel.

* NDJSON sockets (tools, sensors, updater): the JSON-RPC request ``dev.kiki.service.getInfo``;
* ``a11y.sock``: a ``GetInfo`` FlatBuffers message;
* the sync relay: ``GET /healthz`` over HTTP on its WebSocket port;
* the D-Bus gateway: ``dev.kiki.Service1.GetInfo`` on the session bus.

Each probe is bounded by ``timeout`` and raises a :class:`~libkiki.errors.KikiError` saying what
went wrong (not running, refused, malformed answer).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from libkiki.constellation import (
    DEFAULT_RELAY_HOST,
    DEFAULT_RELAY_PORT,
    GATEWAY_BUS_NAME,
    GATEWAY_OBJECT_PATH,
    GET_INFO,
    SERVICE_INTERFACE,
    ServiceSpec,
)
from libkiki.errors import KikiError, PeerGone, ProtocolError, Timeout, Unavailable, error_for_code
from libkiki.framing import FrameDecoder, Oversized, encode_frame
from libkiki.rpc import connect_unix


@dataclass(frozen=True, slots=True)
class Where:
    """Where to find the services: a runtime directory, the relay's address, a session bus."""

    runtime_dir: Path
    relay: str = f"{DEFAULT_RELAY_HOST}:{DEFAULT_RELAY_PORT}"
    bus_address: str | None = None


async def _unix(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.open_unix_connection(str(path), limit=1 << 20)
    except FileNotFoundError:
        raise Unavailable(f"not running: {path} does not exist") from None
    except ConnectionRefusedError:
        raise Unavailable(f"not running: {path} refuses connections") from None
    except PermissionError:
        raise Unavailable(f"permission denied on {path}") from None


async def jsonrpc_info(path: Path) -> dict[str, Any]:
    async with connect_unix(path) as conn:
        result = await conn.request(GET_INFO)
    if not isinstance(result, dict):
        raise ProtocolError("the service's answer has no result object")
    return result


async def a11y_info(path: Path) -> dict[str, Any]:
    # Here, not at the top: the wire module brings FlatBuffers (and numpy, where installed),
    # which ``kiki status`` of the other services does without.
    from libkiki.a11y import wire as a11y_wire

    reader, writer = await _unix(path)
    decoder = FrameDecoder()
    try:
        writer.write(encode_frame(a11y_wire.encode(a11y_wire.GetInfo(1))))
        await writer.drain()
        while data := await reader.read(65536):
            for frame in decoder.feed(data):
                if isinstance(frame, Oversized):
                    raise frame.error
                message = a11y_wire.decode(frame)
                if isinstance(message, a11y_wire.Info):
                    return message.as_dict()
                if isinstance(message, a11y_wire.Error):
                    raise error_for_code(message.code, message.message)
    finally:
        writer.close()
    raise PeerGone("the service closed the connection without answering")


async def http_info(address: str) -> dict[str, Any]:
    host, _, port = address.rpartition(":")
    try:
        reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    except OSError as exc:
        raise Unavailable(f"not running: {address}: {exc.strerror or exc}") from None
    try:
        writer.write(
            f"GET /healthz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        raw = await reader.read(1 << 20)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
    if not status_line.startswith("HTTP/1.1 200"):
        raise ProtocolError(f"unexpected answer to GET /healthz: {status_line}")
    try:
        result = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ProtocolError("the relay answered /healthz with malformed JSON") from None
    if not isinstance(result, dict):
        raise ProtocolError("the relay's /healthz is not a JSON object")
    return result


async def dbus_info(bus_address: str | None) -> dict[str, Any]:
    try:
        from dbus_fast import Message, MessageType
        from dbus_fast.aio import MessageBus
    except ImportError:
        raise Unavailable("dbus-fast is not installed; cannot reach the session bus") from None
    address = bus_address or os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    if not address:
        raise Unavailable("no session bus (DBUS_SESSION_BUS_ADDRESS is not set)")
    try:
        bus = await MessageBus(bus_address=address).connect()
    except Exception as exc:
        raise Unavailable(f"cannot connect to the session bus: {exc}") from None
    try:
        reply = await bus.call(
            Message(
                destination=GATEWAY_BUS_NAME,
                path=GATEWAY_OBJECT_PATH,
                interface=SERVICE_INTERFACE,
                member="GetInfo",
            )
        )
    finally:
        bus.disconnect()
    if reply is None or reply.message_type == MessageType.ERROR:
        name = reply.error_name if reply is not None else "no reply"
        raise Unavailable(f"not running on the session bus ({name})")
    return {key: variant.value for key, variant in reply.body[0].items()}


async def probe(spec: ServiceSpec, where: Where, within: float = 3.0) -> dict[str, Any]:
    try:
        async with asyncio.timeout(within):
            match spec.health:
                case "jsonrpc":
                    assert spec.socket_file is not None
                    return await jsonrpc_info(where.runtime_dir / spec.socket_file)
                case "a11y":
                    assert spec.socket_file is not None
                    return await a11y_info(where.runtime_dir / spec.socket_file)
                case "http":
                    return await http_info(where.relay)
                case "dbus":
                    return await dbus_info(where.bus_address)
    except TimeoutError:
        raise Timeout(f"no answer within {within:.1f}s") from None
    except ConnectionError as exc:
        raise PeerGone(f"the service dropped the connection ({exc.strerror or exc})") from None
    raise KikiError(f"unknown health channel {spec.health}")


async def probe_all(
    specs: tuple[ServiceSpec, ...], where: Where, within: float = 3.0
) -> Mapping[str, dict[str, Any] | KikiError]:
    async def one(spec: ServiceSpec) -> dict[str, Any] | KikiError:
        try:
            return await probe(spec, where, within)
        except KikiError as exc:
            return exc

    results = await asyncio.gather(*(one(spec) for spec in specs))
    return {spec.name: result for spec, result in zip(specs, results, strict=True)}
