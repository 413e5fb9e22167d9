"""The updater's tools on the broker: ``dev.kiki.update.*`` and the stream
``dev.kiki.update.subscribeOperations``.

The same operations as on ``updater.sock`` (:class:`~kiki_updater.updater.Updater`), for the
caller the broker names (``call.peer``): the broker's policy (``tool-policy.toml``) says who may
call each tool at all; the updater's ``managers`` then who may change what is installed. A
long operation reports MCP progress (percent, and the phase and bytes in its message). The
stream carries every operation's changes (each is a ``#progress`` message: the operation as
``status`` shows it); a subscriber that reads slowly gets the latest state of each, merged.

A directory install (``install {appId, directory}``) and an agent's export or import (``out``,
``source``) are not offered here: the updater reaches a caller's directory only through the
descriptor the caller opened and passed on ``updater.sock`` (``server.py``), and no descriptor
crosses the broker. The tools refuse them (``InvalidParams``), for a local caller and on behalf
of a remote person alike, saying to run ``kiki app install DIR`` or ``kiki agent`` on the
device.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from libkiki.errors import PermissionDenied
from libkiki.paths import TOOLS_SOCKET, socket_path
from libkiki.peer import PeerCred
from libkiki.streams_provider import StreamContext
from libkiki.tools import ToolCall, ToolProvider

if TYPE_CHECKING:
    from kiki_updater.config import UpdaterConfig
    from kiki_updater.core import Operation
    from kiki_updater.updater import Updater

log = logging.getLogger(__name__)

NSID = "dev.kiki.update."
OPERATIONS = NSID + "subscribeOperations"
PENDING_MAX = 256  # operations waiting to be sent to one stream, merged by id


def _caller(call: ToolCall) -> PeerCred:
    cred = call.peer
    if cred is None:
        raise PermissionDenied("the broker did not say who is calling")
    return cred


def _progress(call: ToolCall) -> Callable[[Operation], None]:
    def send(op: Operation) -> None:
        task = asyncio.ensure_future(call.progress(op.percent(), 100, f"{op.phase} {op.bytes} B"))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    return send


def make_provider(updater: Updater, path: Path) -> ToolProvider:
    provider = ToolProvider(path)

    @provider.tool(NSID + "list")
    async def list_(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        return await updater.listing()

    @provider.tool(NSID + "status")
    async def status(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        return await updater.status()

    @provider.tool(NSID + "history")
    async def history(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        return await updater.history(args)

    @provider.tool(NSID + "install")
    async def install(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        op = await updater.install(_caller(call), args, update=False, on_progress=_progress(call))
        return {"operation": op.view()}

    @provider.tool(NSID + "update")
    async def update(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        if args.get("target") == "os":
            op = await updater.os.upgrade(_caller(call), args, _progress(call))
        else:
            op = await updater.install(
                _caller(call), args, update=True, on_progress=_progress(call)
            )
        return {"operation": op.view()}

    @provider.tool(NSID + "rollback")
    async def rollback(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        if args.get("target") == "os":
            op = await updater.os.rollback(_caller(call), args, _progress(call))
        else:
            op = await updater.rollback(_caller(call), args, _progress(call))
        return {"operation": op.view()}

    @provider.tool(NSID + "exportAgent")
    async def export_agent(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        op = await updater.agents.export(_caller(call), args, _progress(call))
        return {"operation": op.view()}

    @provider.tool(NSID + "importAgent")
    async def import_agent(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        op = await updater.agents.import_(_caller(call), args, _progress(call))
        return {"operation": op.view()}

    @provider.tool(NSID + "migrate")
    async def migrate(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        op = await updater.os.switch(_caller(call), args, _progress(call))
        return {"operation": op.view()}

    @provider.tool(NSID + "remove")
    async def remove(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        op = await updater.remove(_caller(call), args, _progress(call))
        return {"operation": op.view()}

    @provider.subscription(OPERATIONS)
    async def operations(params: dict[str, Any], stream: StreamContext) -> AsyncIterator[Any]:
        pending: OrderedDict[str, Operation] = OrderedDict()
        wake = asyncio.Event()

        def heard(op: Operation) -> None:
            pending[op.id] = op
            pending.move_to_end(op.id)
            while len(pending) > PENDING_MAX:
                pending.popitem(last=False)
            wake.set()

        updater.core.listeners.append(heard)
        try:
            while True:
                await wake.wait()
                wake.clear()
                while pending:
                    _, op = pending.popitem(last=False)
                    yield {"$type": f"{OPERATIONS}#progress", "operation": op.view()}
        finally:
            updater.core.listeners.remove(heard)

    return provider


async def broker_loop(config: UpdaterConfig, updater: Updater) -> None:
    """Keep the tools registered (libkiki's one loop) unless ``broker_tools`` is false."""
    if not config.broker_tools:
        return
    setting = config.broker_socket
    path = Path(setting) if setting else socket_path(TOOLS_SOCKET)
    await make_provider(updater, path).keep_registered()
