"""asyncio layer of the a11y-server: accepts connections on a11y.sock and answers them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator

from kiki_a11y_server.protocol import A11yConnection, Request, Violation
from libkiki import a11y_wire as wire
from libkiki.config import ServiceConfig
from libkiki.paths import A11Y_SOCKET, socket_path
from libkiki.peer import peer_cred
from libkiki.servers import serve_stream
from libkiki.service import ServiceContext

log = logging.getLogger(__name__)


class A11yConfig(ServiceConfig):
    max_frame: int = 16 << 20


def _answer(ctx: ServiceContext, message: wire.Message) -> wire.Message:
    match message:
        case wire.Hello(request_id):
            return wire.Hello(request_id, wire.PROTOCOL_VERSION, ctx.name)
        case wire.GetInfo(request_id):
            info = ctx.info()
            return wire.Info(
                request_id,
                ctx.name,
                ctx.version,
                info["pid"],
                int((time.monotonic() - ctx.started) * 1000),
                ctx.status,
                tuple(sorted(ctx.counters.items())),
            )
    return wire.Error(message.request_id, -32601, "Method not found")


async def handle(
    ctx: ServiceContext,
    config: A11yConfig,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    sock: socket.socket = writer.get_extra_info("socket")
    peer = peer_cred(sock)
    conn = A11yConnection(config.max_frame)
    while data := await reader.read(65536):
        for event in conn.receive_data(data):
            if isinstance(event, Violation):
                ctx.counters["protocol_errors"] += 1
                log.info("peer %s: %s", peer.describe(), event.error)
                writer.write(event.reply)
                if event.fatal:
                    await writer.drain()
                    return
            elif isinstance(event, Request):
                ctx.counters["requests"] += 1
                writer.write(conn.send(_answer(ctx, event.message)))
        await writer.drain()
    if (leftover := conn.eof()) is not None:
        ctx.counters["protocol_errors"] += 1
        log.info("peer %s: %s", peer.describe(), leftover.error)


@contextlib.asynccontextmanager
async def serve(ctx: ServiceContext) -> AsyncIterator[None]:
    config: A11yConfig = ctx.config
    listener = ctx.listeners.unix("a11y", socket_path(A11Y_SOCKET))

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handle(ctx, config, reader, writer)

    def reject() -> bytes:
        error = wire.Error(0, -32005, f"too many connections (limit {config.max_connections})")
        return A11yConnection(config.max_frame).send(error)

    async with serve_stream(
        listener,
        on_connect,
        max_connections=config.max_connections,
        reject=reject,
        counters=ctx.counters,
    ):
        ctx.status = f"serving a11y.sock ({'activated' if ctx.listeners.activated else 'bound'})"
        yield
