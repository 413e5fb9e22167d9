"""asyncio layer of the sync relay: a WebSocket server with a plain-HTTP health endpoint.

``GET /healthz`` answers the service's info as JSON on the same port as the WebSockets, so
operators and load balancers can probe it without speaking WebSocket. Every other request gets
an HTTP answer too. The decisions are sans-I/O, in :mod:`kiki_sync_relay.handshake` (what is
refused before the handshake) and :mod:`kiki_sync_relay.core` (what an accepted request
gets); this module only moves bytes between them and websockets.

Sessions (the Yjs document per session) are not served yet: a WebSocket client is told so with
close code 1013 ("try again later") rather than being left hanging.
"""

from __future__ import annotations

import contextlib
import http
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from kiki_sync_relay.config import RelayConfig
from kiki_sync_relay.core import Answer, Route, json_response, route
from kiki_sync_relay.handshake import Refusal, parse_opening
from libkiki.admission import LogBudget
from libkiki.service import ServiceContext

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def serve(ctx: ServiceContext) -> AsyncIterator[None]:
    config: RelayConfig = ctx.config
    listener = ctx.listen((config.host, config.port))
    live: set[ServerConnection] = set()

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        ctx.counters["http_requests"] += 1
        decision = route(request, len(live), config.max_connections)
        if decision is Route.HEALTH:
            return json_response(http.HTTPStatus.OK, ctx.info())
        if isinstance(decision, Answer):
            if decision.counter is not None:
                ctx.counters[decision.counter] += 1
            return decision.response()
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
