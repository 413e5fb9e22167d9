"""asyncio layer of the updater: JSON-RPC 2.0 on ``updater.sock`` (the lexicons
``dev.kiki.update.*``) over the operations of :class:`~kiki_updater.updater.Updater`, their
progress as MCP progress; the broker's tools beside it (:mod:`kiki_updater.tools`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from kiki_updater.config import UpdaterConfig
from kiki_updater.core import Operation
from kiki_updater.running import Progress
from kiki_updater.updater import Updater
from libkiki.constellation import GET_INFO
from libkiki.errors import InvalidParams
from libkiki.rpc import Connection, Methods, RequestContext
from libkiki.rpc_service import serve_configured
from libkiki.service import ServiceContext

__all__ = ["SEND_DIRECTORY", "methods", "serve", "take_directory"]

NSID = "dev.kiki.update."
# Asked of the caller of a directory install: it answers with one byte ("\n") carrying the
# directory's descriptor (SCM_RIGHTS), opened by the caller as itself.
SEND_DIRECTORY = NSID + "sendDirectory"
HANDOVER_TIMEOUT = 10.0


async def take_directory(conn: Connection) -> int:
    """Ask the caller on ``conn`` for its directory's descriptor and take it off the socket:
    reading is paused meanwhile, so that this is the one read that accepts descriptors."""
    lock = conn.state.setdefault("kiki_updater.handover", asyncio.Lock())
    async with lock:
        conn.pause_reading()
        try:
            await conn.notify(SEND_DIRECTORY)
            try:
                async with asyncio.timeout(HANDOVER_TIMEOUT):
                    data, fds = await conn.receive_fds(1)
            except TimeoutError:
                raise InvalidParams(
                    f"directory: no descriptor was passed within {HANDOVER_TIMEOUT:g} s "
                    "(use `kiki app install DIR`)"
                ) from None
        finally:
            conn.resume_reading()
    if data != b"\n" or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise InvalidParams('directory: expected "\\n" with one descriptor')
    return fds[0]


def methods(ctx: ServiceContext, updater: Updater) -> Methods:
    table = Methods()

    @table.method(GET_INFO)
    async def get_info(request: RequestContext) -> dict[str, Any]:
        return ctx.info()

    def progress_of(request: RequestContext) -> Progress:
        def send(op: Operation) -> None:
            said = f"{op.phase} {op.bytes} bytes" if op.bytes else op.phase
            task = asyncio.ensure_future(request.progress(op.percent(), 100, said))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

        return send

    @table.method(NSID + "list")
    async def list_(request: RequestContext) -> dict[str, Any]:
        return await updater.listing()

    @table.method(NSID + "status")
    async def status(request: RequestContext) -> dict[str, Any]:
        return await updater.status()

    @table.method(NSID + "history")
    async def history(request: RequestContext, **params: Any) -> dict[str, Any]:
        return await updater.history(params)

    @table.method(NSID + "install")
    async def install(request: RequestContext, **params: Any) -> dict[str, Any]:
        if "directory" not in params:
            op = await updater.install(
                request.peer, params, update=False, on_progress=progress_of(request)
            )
            return {"operation": op.view()}
        dirfd = await take_directory(request.connection)
        try:
            op = await updater.install(
                request.peer,
                params,
                update=False,
                on_progress=progress_of(request),
                directory_fd=dirfd,
            )
        finally:
            os.close(dirfd)
        return {"operation": op.view()}

    @table.method(NSID + "update")
    async def update(request: RequestContext, **params: Any) -> dict[str, Any]:
        if params.get("target") == "os":
            op = await updater.os.upgrade(request.peer, params, progress_of(request))
        else:
            op = await updater.install(
                request.peer, params, update=True, on_progress=progress_of(request)
            )
        return {"operation": op.view()}

    @table.method(NSID + "rollback")
    async def rollback(request: RequestContext, **params: Any) -> dict[str, Any]:
        if params.get("target") == "os":
            op = await updater.os.rollback(request.peer, params, progress_of(request))
        else:
            op = await updater.rollback(request.peer, params, progress_of(request))
        return {"operation": op.view()}

    @table.method(NSID + "exportAgent")
    async def export_agent(request: RequestContext, **params: Any) -> dict[str, Any]:
        out = await take_directory(request.connection)
        try:
            op = await updater.agents.export(request.peer, params, progress_of(request), out)
        finally:
            os.close(out)
        return {"operation": op.view()}

    @table.method(NSID + "importAgent")
    async def import_agent(request: RequestContext, **params: Any) -> dict[str, Any]:
        source = await take_directory(request.connection)
        try:
            op = await updater.agents.import_(request.peer, params, progress_of(request), source)
        finally:
            os.close(source)
        return {"operation": op.view()}

    @table.method(NSID + "migrate")
    async def migrate(request: RequestContext, **params: Any) -> dict[str, Any]:
        op = await updater.os.switch(request.peer, params, progress_of(request))
        return {"operation": op.view()}

    @table.method(NSID + "remove")
    async def remove(request: RequestContext, **params: Any) -> dict[str, Any]:
        op = await updater.remove(request.peer, params, progress_of(request))
        return {"operation": op.view()}

    return table


@contextlib.asynccontextmanager
async def serve(ctx: ServiceContext) -> AsyncIterator[None]:
    config: UpdaterConfig = ctx.config
    updater = Updater(config)
    listener = ctx.listen()
    recovered = await updater.recover()
    from kiki_updater.tools import broker_loop

    async with serve_configured(ctx, listener, methods(ctx, updater)):
        how = "activated" if ctx.listeners.activated else "bound"
        extra = f", recovered {len(recovered)} interrupted operation(s)" if recovered else ""
        ctx.status = f"serving {ctx.spec.socket_file} ({how}){extra}"
        tools = asyncio.create_task(broker_loop(config, updater))
        try:
            yield
        finally:
            tools.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tools
