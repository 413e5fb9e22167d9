"""A service whose channel is JSON-RPC 2.0 on a Unix socket (tools, sensors, updater).

``jsonrpc_service(add_methods)`` is the ``serve`` factory such a service hands to
:func:`libkiki.service.service_main`: it takes the socket the service's declaration in
:mod:`libkiki.constellation` names (``ctx.listen()``: the activated one, or its socket file bound
by hand), serves the method table with the configured limits, and always answers the health
request ``dev.kiki.service.getInfo``. A service with a serve of its own (the broker, the sensor
publisher) uses :func:`serve_configured` for the same limits.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

from libkiki.config import ServiceConfig
from libkiki.constellation import GET_INFO
from libkiki.rpc import Methods, RequestContext, serve_unix
from libkiki.rpc.server import RpcServer
from libkiki.service import ServeFactory, ServiceContext

MethodsFactory = Callable[[ServiceContext, Methods], None]


def serve_configured(
    ctx: ServiceContext, listener: socket.socket, methods: Methods, **options: Any
) -> RpcServer:
    """:func:`~libkiki.rpc.serve_unix` with the service's configured limits and counters;
    ``options`` (hooks, a request timeout) go through as they are."""
    config: ServiceConfig = ctx.config
    return serve_unix(
        listener,
        methods,
        max_connections=config.max_connections,
        max_connections_per_user=config.max_connections_per_user,
        max_line=config.max_line,
        max_in_flight=config.max_in_flight,
        drain_timeout=config.drain_timeout,
        counters=ctx.counters,
        **options,
    )


def jsonrpc_service(add_methods: MethodsFactory | None = None) -> ServeFactory:
    @contextlib.asynccontextmanager
    async def serve(ctx: ServiceContext) -> AsyncIterator[None]:
        listener = ctx.listen()
        methods = Methods()

        @methods.method(GET_INFO)
        async def get_info(request: RequestContext) -> dict[str, Any]:
            return ctx.info()

        if add_methods is not None:
            add_methods(ctx, methods)
        async with serve_configured(ctx, listener, methods):
            how = "activated" if ctx.listeners.activated else "bound"
            ctx.status = f"serving {ctx.spec.socket_file} ({how})"
            yield

    return serve
