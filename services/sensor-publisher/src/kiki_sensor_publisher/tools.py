"""The publisher's tools on the broker: ``dev.kiki.sensor.list`` and ``dev.kiki.sensor.read``.

Registered whenever the broker is there; the broker being absent or restarting is normal (the
publisher may start first): :meth:`ToolProvider.keep_registered` registers again with libkiki's
back-off, and never stops the service.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from libkiki.paths import TOOLS_SOCKET, socket_path
from libkiki.peer import PeerCred
from libkiki.tools import ToolCall, ToolProvider

if TYPE_CHECKING:
    from kiki_sensor_publisher.server import Publisher

log = logging.getLogger(__name__)

LIST = "dev.kiki.sensor.list"
READ = "dev.kiki.sensor.read"


def _caller(call: ToolCall) -> PeerCred:
    c = call.caller
    # The broker fills the caller in from SO_PEERCRED; without it, nobody in particular.
    return PeerCred(
        pid=int(c.get("pid", 0)),
        uid=int(c.get("uid", -1)),
        gid=int(c.get("gid", -1)),
        app_id=c.get("appId"),
    )


def tool_view(view: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "kind", "unit", "channels", "scale", "rateHz", "ring", "capacity")
    out = {k: view[k] for k in keys if k in view}
    out["fields"] = [f["name"] for f in view["layout"]["fields"]]
    out["layout"] = view["layout"]["name"]
    return out


def provider(pub: Publisher, path: Path) -> ToolProvider:
    tools = ToolProvider(path)

    @tools.tool(LIST)
    async def list_sensors(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        return {"sensors": [tool_view(v) for v in pub.views(_caller(call))]}

    @tools.tool(READ)
    async def read(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        result = pub.read_for(_caller(call), args.get("sensor", ""), args.get("count", 1))
        result["sensor"] = tool_view(result["sensor"])
        return result

    return tools


async def broker_loop(pub: Publisher) -> None:
    """Keep the tools registered (libkiki's one loop) unless ``broker_tools`` is false."""
    if not pub.config.broker_tools:
        return
    setting = pub.config.broker_socket
    await provider(pub, Path(setting) if setting else socket_path(TOOLS_SOCKET)).keep_registered()
