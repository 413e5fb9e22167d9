"""asyncio layer of the sync relay: a WebSocket server with a plain-HTTP health endpoint.

``GET /healthz`` answers the service's info as JSON on the same port as the WebSockets, so
operators and load balancers can probe it without speaking WebSocket. Every other request gets
an HTTP answer too (see :mod:`kiki_sync_relay.handshake`). Sessions (the Yjs
document per session) are not served yet: a WebSocket client is told so with close code 1013
("try again later") rather than being left hanging.
"""

from __future__ import annotations

import contextlib
import http
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from kiki_sync_relay.handshake import Refusal, parse_opening
from libkiki.admission import LogBudget
from libkiki.config import ServiceConfig
from libkiki.constellation import DEFAULT_RELAY_HOST, DEFAULT_RELAY_PORT
from libkiki.service import ServiceContext

log = logging.getLogger(__name__)


class RelayConfig(ServiceConfig):
    host: str = DEFAULT_RELAY_HOST
    port: int = DEFAULT_RELAY_PORT
    max_message: int = 1 << 20


def _json(status: http.HTTPStatus, body: object) -> Response:
    payload = orjson.dumps(body) + b"\n"
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
    return Response(status.value, status.phrase, headers, payload)


@contextlib.asynccontextmanager
async def serve(ctx: ServiceContext) -> AsyncIterator[None]:
    config: RelayConfig = ctx.config
    listener = ctx.listeners.tcp("relay", config.host, config.port)
    live: set[ServerConnection] = set()

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        ctx.counters["http_requests"] += 1
        if request.path == "/healthz":
            return _json(http.HTTPStatus.OK, ctx.info())
        if len(live) >= config.max_connections:
            ctx.counters["connections_refused"] += 1
            return _json(http.HTTPStatus.SERVICE_UNAVAILABLE, {"error": "too many connections"})
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return _json(http.HTTPStatus.NOT_FOUND, {"error": f"no resource at {request.path}"})
        return None

    # Refusals are logged as admission's are: a flood of bad requests costs a bounded number
    # of lines, and the next line that is logged says how many were not.
    log_budget = LogBudget()

    def refused(refusal: Refusal) -> None:
        ctx.counters["http_requests"] += 1
        ctx.counters["refused_requests"] += 1
        if log_budget.allow(time.monotonic()):
            more = log_budget.take_suppressed()
            also = f" ({more} more refused since, not logged)" if more else ""
            log.info("refused a request: %s %s%s", refusal.status.value, refusal.reason, also)

    class Connection(ServerConnection):
        def __init__(self, protocol: ServerProtocol, *args: Any, **kwargs: Any) -> None:
            super().__init__(protocol, *args, **kwargs)
            protocol.parser = parse_opening(protocol, refused)
            next(protocol.parser)

    async def handler(connection: ServerConnection) -> None:
        live.add(connection)
        ctx.counters["websocket_connections"] += 1
        try:
            await connection.close(1013, "sessions are not served yet")
        finally:
            live.discard(connection)

    async with ws_serve(
        handler,
        sock=listener,
        process_request=process_request,
        max_size=config.max_message,
        create_connection=Connection,
    ) as server:
        host, port = listener.getsockname()[:2]
        how = "activated" if ctx.listeners.activated else "bound"
        ctx.status = f"serving ws://{host}:{port} ({how})"
        yield
        server.close(close_connections=True)
        if more := log_budget.take_suppressed():
            log.info("%d more requests refused, not logged", more)
