"""The publisher's tools on the broker: ``dev.kiki.sensor.list`` and ``dev.kiki.sensor.read``.

They answer from the :class:`~kiki_sensor_publisher.catalog.Catalog`, as the notify socket does,
for the caller the broker vouches for (:attr:`ToolCall.peer`: its uid, groups and app id, whose
app id only where the broker says so), matched against the same read policy.

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
    from kiki_sensor_publisher.catalog import Catalog
    from kiki_sensor_publisher.config import SensorConfig

log = logging.getLogger(__name__)

LIST = "dev.kiki.sensor.list"
READ = "dev.kiki.sensor.read"

# A call whose caller the broker did not say: nobody in particular (only "*" lets it read).
NOBODY = PeerCred(pid=0, uid=-1, gid=-1)


def caller(call: ToolCall) -> PeerCred:
    return call.peer or NOBODY


def tool_view(view: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "kind", "unit", "channels", "scale", "rateHz", "ring", "capacity")
    out = {k: view[k] for k in keys if k in view}
    out["fields"] = [f["name"] for f in view["layout"]["fields"]]
    out["layout"] = view["layout"]["name"]
    return out


def list_for(catalog: Catalog, peer: PeerCred) -> dict[str, Any]:
    """``dev.kiki.sensor.list``'s answer."""
    return {"sensors": [tool_view(v) for v in catalog.views(peer)]}


def read_for(catalog: Catalog, peer: PeerCred, args: dict[str, Any]) -> dict[str, Any]:
    """``dev.kiki.sensor.read``'s answer."""
    result = catalog.read(peer, args.get("sensor", ""), args.get("count", 1))
    result["sensor"] = tool_view(result["sensor"])
    return result


def provider(catalog: Catalog, path: Path) -> ToolProvider:
    tools = ToolProvider(path)

    @tools.tool(LIST)
    async def list_sensors(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        return list_for(catalog, caller(call))

    @tools.tool(READ)
    async def read(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        return read_for(catalog, caller(call), args)

    return tools


async def broker_loop(config: SensorConfig, catalog: Catalog) -> None:
    """Keep the tools registered (libkiki's one loop) unless ``broker_tools`` is false."""
    if not config.broker_tools:
        return
    setting = config.broker_socket
    await provider(
        catalog, Path(setting) if setting else socket_path(TOOLS_SOCKET)
    ).keep_registered()
