"""The portal tools and streams on the broker: ``dev.kiki.portal.*``."""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from dbus_fast import Variant

from kiki_dbus_gateway.event_queue import bounded_events
from kiki_dbus_gateway.portal import IFACE, appearance, network_status, plain
from kiki_dbus_gateway.portal_bus import PortalBus
from libkiki.errors import InvalidParams, NotFound, Unavailable
from libkiki.streams_provider import StreamContext
from libkiki.tools import ToolCall, ToolProvider


def add_portal_tools(
    provider: ToolProvider, portal: PortalBus, *, max_events: int, counters: Counter[str]
) -> None:
    @provider.tool("dev.kiki.portal.networkStatus")
    async def network(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        (status,) = await portal.call(f"{IFACE}NetworkMonitor", "GetStatus")
        return network_status(status if isinstance(status, dict) else {})

    @provider.tool("dev.kiki.portal.powerProfile")
    async def power(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        value = await portal.get_property(f"{IFACE}PowerProfileMonitor", "power-saver-enabled")
        return {"powerSaverEnabled": bool(value)}

    @provider.tool("dev.kiki.portal.resolveProxy")
    async def proxy(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        (proxies,) = await portal.call(f"{IFACE}ProxyResolver", "Lookup", "s", [args["uri"]])
        return {"proxies": [str(p)[:2048] for p in proxies[:32]]}

    @provider.tool("dev.kiki.portal.trashFile")
    async def trash(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        path = str(args["path"])
        if not os.path.isabs(path):
            raise InvalidParams("path must be absolute")
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"no file {path}", data={"error": "NotFound"}) from None
        except OSError as exc:
            raise Unavailable(f"cannot open {path}: {exc.strerror}") from None
        try:
            (result,) = await portal.call(f"{IFACE}Trash", "TrashFile", "h", [0], [fd])
        finally:
            os.close(fd)
        if result != 1:
            raise Unavailable(f"the portal could not trash {path}", data={"error": "Failed"})
        return {"trashed": True}

    @provider.tool("dev.kiki.portal.settings")
    async def settings(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        namespaces = [str(n) for n in args.get("namespaces") or []]
        (found,) = await portal.call(f"{IFACE}Settings", "ReadAll", "as", [namespaces])
        out = appearance(found)
        if namespaces:
            out["raw"] = plain(found)
        return out

    @provider.tool("dev.kiki.portal.openUri")
    async def open_uri(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        options = {"ask": Variant("b", bool(args.get("ask", False)))}
        await portal.request(
            f"{IFACE}OpenURI", "OpenURI", "ssa{sv}", ["", str(args["uri"])], options
        )
        return {"opened": True}

    def stream_of(kind: str) -> Any:
        async def stream(params: dict[str, Any], ctx: StreamContext) -> AsyncIterator[Any]:
            # (an async generator of its own: the provider serves those; aclosing removes the
            # listener when the stream ends)
            async with contextlib.aclosing(
                bounded_events(
                    portal.listeners, max_events, dropped, lambda e: e["$type"].startswith(kind)
                )
            ) as events:
                async for event in events:
                    yield event

        return stream

    def dropped() -> None:
        counters["portal_events_dropped"] += 1

    provider.subscription("dev.kiki.portal.memory")(stream_of("dev.kiki.portal.memory#"))
    provider.subscription("dev.kiki.portal.subscribeSettings")(
        stream_of("dev.kiki.portal.subscribeSettings#")
    )
