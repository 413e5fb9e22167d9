"""asyncio layer of the sync relay: a WebSocket server with a plain-HTTP health endpoint.

``GET /healthz`` answers the service's info as JSON on the same port as the WebSockets, so
operators and load balancers can probe it without speaking WebSocket (``HEAD`` too: the same
answer without its body). Every other request gets an HTTP answer too. The decisions are
sans-I/O, in :mod:`kiki_sync_relay.handshake` (what is refused before the handshake) and
:mod:`kiki_sync_relay.core` (what an accepted request gets); a WebSocket on
``/session/<name>`` goes to :class:`kiki_sync_relay.relay.Relay`.
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

from kiki_sync_relay.admin import add_info, admin_methods
from kiki_sync_relay.config import RelayConfig
from kiki_sync_relay.core import Answer, Route, for_method, json_response, route, target
from kiki_sync_relay.handshake import Refusal, parse_opening
from kiki_sync_relay.link import DeviceLink, LinkSettings
from kiki_sync_relay.relay import Relay
from kiki_sync_relay.store import Store
from kiki_sync_relay.upstream import Upstream
from libkiki.admission import LogBudget
from libkiki.private_dir import ensure_private_dir
from libkiki.rpc_service import serve_configured
from libkiki.service import ServiceContext
from libkiki.sync import ADMIN_FDNAME
from libkiki.sync.tokens import KEY_FILE, Revocations, SigningKey, Verifier

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def serve(ctx: ServiceContext) -> AsyncIterator[None]:
    config: RelayConfig = ctx.config
    listener = ctx.listen((config.host, config.port))
    live: set[ServerConnection] = set()
    state = config.state_path()
    ensure_private_dir(state, mode=0o700)
    key = SigningKey.load_or_create(state / KEY_FILE)
    store = Store(state / "sessions.sqlite3")
    store.start()
    relay = Relay(
        store,
        Verifier([key.public, *config.trusted_keys]),
        Revocations(state / "revoked.json"),
        config.limits(),
        ctx.counters,
        idle_timeout=config.idle_timeout,
        compact_every=config.compact_every,
        auth_timeout=config.auth_timeout,
        send_buffer=config.send_buffer,
        own_kid=key.kid,
        linked=config.link_sessions,
    )

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        ctx.counters["http_requests"] += 1
        decision = route(request, len(live), config.max_connections)
        if decision is Route.HEALTH:
            return for_method(request, json_response(http.HTTPStatus.OK, ctx.info()))
        if isinstance(decision, Answer):
            if decision.counter is not None:
                ctx.counters[decision.counter] += 1
            return for_method(request, decision.response())
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
            assert connection.request is not None
            where = target(connection.request.path)
            assert where is not None  # process_request answered 404 otherwise
            await relay.serve(connection, *where)
        finally:
            live.discard(connection)

    host, port = listener.getsockname()[:2]
    upstream = Upstream(
        relay,
        config.upstream or "",
        config.upstream_sessions if config.upstream else [],
        key,
        config.device_id,
        max_message=config.max_message,
        backoff_max=config.upstream_backoff_max,
        pending_path=state / "upstream-revocations.json",
    )
    link = DeviceLink(
        relay,
        config.link_sessions,
        LinkSettings(
            device_id=config.device_id,
            intent_rate=config.link_intent_rate,
            intent_burst=config.link_intent_burst,
            max_running=config.link_max_running,
            max_pending=config.link_max_pending,
            keep=config.link_keep,
            max_age=config.link_intent_max_age,
            max_entries=config.link_max_entries,
            prune_every=config.link_prune_every,
        ),
        broker_socket=config.broker_path(),
        tools=config.link_tools,
        backoff_max=config.link_backoff_max,
        call_timeout=config.link_call_timeout,
    )
    methods = admin_methods(
        relay, key, config.device_id, config.public_url or f"ws://{host}:{port}", upstream, link
    )
    add_info(methods, ctx.info)
    admin = ctx.listeners.unix(ADMIN_FDNAME, config.admin_path(), mode=0o600)
    async with (
        serve_configured(ctx, admin, methods),
        ws_serve(
            handler,
            sock=listener,
            process_request=process_request,
            max_size=config.max_message,
            # Yjs updates are small and already compact: deflating each one cost more CPU than
            # the rest of relaying it.
            compression=None,
            create_connection=Connection,
        ) as server,
    ):
        how = "activated" if ctx.listeners.activated else "bound"
        ctx.status = f"serving ws://{host}:{port} ({how})"
        try:
            async with upstream.running(), link.running():
                yield
        finally:
            server.close(close_connections=True)
            await server.wait_closed()
            await relay.close_all()
            await store.stop()
        if more := log_budget.take_suppressed():
            log.info("%d more requests refused, not logged", more)
