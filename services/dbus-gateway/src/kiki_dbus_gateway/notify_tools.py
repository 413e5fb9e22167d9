"""The notification tools and streams on the broker: ``dev.kiki.notify.*``.

``notify``, ``close``, ``capabilities`` and ``serverInfo`` call the session's notification
server; ``subscribeEvents`` carries the actions invoked on and the closing of the agent's own
notifications. ``recent`` and ``subscribeObserved`` show what other apps notified: private
data, so ``recent`` answers only callers :func:`~kiki_dbus_gateway.notify.may_read` admits and
``subscribeObserved`` is registered as a private stream (``ToolProvider.subscription(...,
private=True)``): a stream has no caller to decide for, so the broker decides, and for a
private stream its default is the session's own user (its agent) and root alone, others only
through a policy rule naming the stream. ``notify_observe_stream`` (on) can turn it off.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

from kiki_dbus_gateway.event_queue import bounded_events
from kiki_dbus_gateway.notify import (
    EVENTS,
    OBSERVED,
    Notifications,
    may_read,
    notify_args,
)
from kiki_dbus_gateway.notify_bus import NotifyBus
from libkiki.errors import PermissionDenied
from libkiki.principals import Principals
from libkiki.streams_provider import StreamContext
from libkiki.tools import ON_BEHALF_OF_META, ToolCall, ToolProvider


def add_notify_tools(
    provider: ToolProvider,
    state: Notifications,
    notify_bus: NotifyBus,
    *,
    app_name: str,
    readers: Principals,
    observe_stream: bool,
    max_events: int,
    counters: Counter[str],
) -> None:
    @provider.tool("dev.kiki.notify.notify")
    async def notify(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        mark = None if args.get("replacesId") else state.sending()
        (notification_id,) = await notify_bus.call(
            "Notify", "susssasa{sv}i", notify_args(args, app_name)
        )
        state.sent(notification_id, mark)
        return {"id": notification_id}

    @provider.tool("dev.kiki.notify.close")
    async def close(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        await notify_bus.call("CloseNotification", "u", [int(args["id"])])
        return {"ok": True}

    @provider.tool("dev.kiki.notify.capabilities")
    async def capabilities(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        (caps,) = await notify_bus.call("GetCapabilities")
        return {"capabilities": [str(c)[:128] for c in caps[:64]]}

    @provider.tool("dev.kiki.notify.serverInfo")
    async def server_info(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        name, vendor, version, spec = await notify_bus.call("GetServerInformation")
        return {
            "name": str(name)[:256],
            "vendor": str(vendor)[:256],
            "version": str(version)[:256],
            "specVersion": str(spec)[:64],
        }

    @provider.tool("dev.kiki.notify.recent")
    async def recent(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        delegated = ON_BEHALF_OF_META in (call.request.meta or {})
        if not may_read(call.peer, delegated, os.getuid(), readers):
            raise PermissionDenied(
                "other apps' notifications are the session user's: notify_readers names who "
                "else may read them"
            )
        return {"notifications": state.recent(int(args.get("limit", 50)))}

    def queue_stream(listeners: list[Callable[[dict[str, Any]], None]]) -> Any:
        async def stream(params: dict[str, Any], ctx: StreamContext) -> AsyncIterator[Any]:
            # (an async generator of its own: the provider serves those; aclosing removes the
            # listener when the stream ends)
            async with contextlib.aclosing(
                bounded_events(listeners, max_events, dropped)
            ) as events:
                async for event in events:
                    yield event

        return stream

    def dropped() -> None:
        counters["notify_events_dropped"] += 1

    provider.subscription(EVENTS)(queue_stream(state.event_listeners))
    if observe_stream:
        provider.subscription(OBSERVED, private=True)(queue_stream(state.observed_listeners))
