"""asyncio layer of the updater: JSON-RPC 2.0 on ``updater.sock`` (the lexicons
``dev.kiki.update.*``), the blocking OSTree work in worker threads, progress as MCP progress
and as events.

Every libostree call blocks, so each operation runs in :func:`asyncio.to_thread`, at most
``max_operations`` at once (a semaphore); the core refuses a second operation on an app that has
one running (:class:`~kiki_updater.core.Busy`). ``gi`` is imported with the first operation that
touches a repository, never at start: a start with no journal left to recover costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from kiki_updater.bootc import Bootc
from kiki_updater.config import UpdaterConfig
from kiki_updater.core import Operation, UpdaterCore, require_manager
from kiki_updater.gio import in_own_context, own_context
from kiki_updater.health import HealthGate
from kiki_updater.journal import Journal, recover
from kiki_updater.local import LOCAL, LocalBuilds, check_directory
from kiki_updater.operations import NotInstalled, Operations
from kiki_updater.os_updates import AgentMoves, OsUpdates
from kiki_updater.pull import Remote
from kiki_updater.store import Deployed, Kind, Store, check_id
from libkiki.constellation import GET_INFO
from libkiki.errors import InvalidParams, NotFound
from libkiki.paths import TOOLS_SOCKET, socket_path, state_dir
from libkiki.peer import PeerCred
from libkiki.rpc import Methods, RequestContext
from libkiki.rpc_service import serve_configured
from libkiki.service import ServiceContext

__all__ = ["Updater", "app_view", "serve"]

log = logging.getLogger(__name__)
NSID = "dev.kiki.update."
Progress = Callable[[Operation], Any]


def app_view(found: Deployed) -> dict[str, Any]:
    """``dev.kiki.update.defs#appView``."""
    view: dict[str, Any] = {
        "appId": found.ident,
        "kind": found.kind,
        "version": found.version,
        "commit": found.commit,
        "ref": found.ref,
        "origin": f"{found.remote}:{found.ref}" if found.remote else found.ref,
    }
    if found.history:
        view["installedAt"] = found.history[-1]["at"]
        view["updatedAt"] = found.history[0]["at"]
    if found.previous:
        view["rollbackCommit"] = found.previous
    return view


def install_lexicons(kind: Kind, ident: str, deployment: Path, allow_breaking: bool) -> None:
    """The install step of an app: its manifest checked against the published lexicons, its
    lexicons, bindings and components installed (libkiki.lexicon.install, imported here: it
    brings the code generator)."""
    if kind != "app":
        return
    from libkiki.lexicon.install import install_app
    from libkiki.lexicon.registry import Registry

    registry, _ = Registry.from_search_path(None)
    install_app(deployment, state_dir(), registry, allow_breaking=allow_breaking)


class Updater:
    def __init__(self, config: UpdaterConfig) -> None:
        self.config = config
        self.core = UpdaterCore()
        root = config.ostree_root()
        self.store = Store(root)
        self.journal = Journal(root)
        broker = Path(config.broker_socket) if config.broker_socket else None
        self.ops = Operations(
            self.store,
            install_step=install_lexicons,
            health=HealthGate(broker or socket_path(TOOLS_SOCKET)),
            journal=self.journal,
        )
        self.local = LocalBuilds(root)
        self.slots = asyncio.Semaphore(config.max_operations)
        self.own_uid = os.getuid()
        self.os = OsUpdates(self, Bootc(config.bootc))
        self.agents = AgentMoves(self)

    async def recover(self) -> list[str]:
        if not self.journal.pending():
            return []
        said = await asyncio.to_thread(self._recover)
        for line in said:
            log.warning("%s", line)
        return said

    def _recover(self) -> list[str]:
        with own_context():  # as every operation: a context of its own in the worker
            return recover(self.store, self.journal)

    def remote(self, name: str) -> Remote:
        if name == LOCAL:  # directory installs' own archive (local.py), never configured
            return self.local.remote()
        found = self.config.remotes.get(name)
        if found is None:
            raise NotFound(f"no remote {name!r} is configured", data={"error": "NotFound"})
        return Remote.of(
            name, found.url, ed25519_keys=tuple(found.ed25519_keys), gpg_keyring=found.gpg_keyring
        )

    # -- running one operation -----------------------------------------------------------------

    async def run(
        self,
        peer: PeerCred | None,
        target: str,
        kind: str,
        app_id: str | None,
        work: Callable[[Operation, Any, Callable[[str, dict[str, Any]], None]], Deployed | None],
        on_progress: Progress | None = None,
    ) -> Operation:
        """Run ``work(op, progress, phase)`` in a worker thread as the operation ``kind`` on
        ``app_id``, reporting its phases and its pull's progress; the finished operation."""
        if peer is not None:
            require_manager(peer, self.config.managers, self.own_uid, f"{kind} of {target}")
        op = self.core.begin(target, kind, app_id)
        loop = asyncio.get_running_loop()

        def report(**changes: Any) -> None:
            self.core.report(op, **changes)
            if on_progress is not None:
                on_progress(op)

        def phase(name: str, info: dict[str, Any]) -> None:  # from the worker thread
            changes: dict[str, Any] = {"phase": name}
            if info.get("commit"):
                changes["commit"] = info["commit"]
            loop.call_soon_threadsafe(lambda: report(**changes))

        try:
            async with self.slots:
                holder: list[Any] = []
                poll = asyncio.create_task(self._poll(holder, op, report))
                try:
                    done = await asyncio.to_thread(
                        in_own_context, work, op, phase, holder, target != "os"
                    )
                finally:
                    poll.cancel()
            if done is not None:
                op.commit = done.commit
                op.message = f"{done.ident} {done.version} ({done.commit[:12]})"
        except BaseException as exc:
            self.core.end(op, error=exc)
            if on_progress is not None:
                on_progress(op)
            raise
        self.core.end(op)
        if on_progress is not None:
            on_progress(op)
        return op

    async def _poll(self, holder: list[Any], op: Operation, report: Callable[..., None]) -> None:
        """Report the pull's progress, which the worker puts in ``holder`` (empty before and
        after it runs)."""
        from kiki_updater.pull import snapshot

        last = None
        while True:
            await asyncio.sleep(self.config.progress_interval)
            if op.phase != "pull" or not holder:
                continue
            now = snapshot(holder[0])
            if now != last:
                last = now
                report(bytes=now.bytes, objects=now.objects, objects_total=now.objects_total)

    # -- the operations ------------------------------------------------------------------------

    async def install(
        self,
        peer: PeerCred | None,
        params: dict[str, Any],
        *,
        update: bool,
        on_progress: Progress | None = None,
    ) -> Operation:
        kind, ident = target_of(params)
        check_id(kind, ident)
        if "directory" in params and not update:
            return await self.install_directory(peer, kind, ident, params, on_progress)
        requested = params.get("remote")
        if not update and not requested:
            raise InvalidParams("which remote? (remote)")
        if requested:
            self.remote(str(requested))  # an unknown remote is refused before any work
        channel = str(params.get("channel") or "stable")

        def work(op: Operation, progress: Any, phase: Any) -> Deployed:
            # An update's remote is where it came from: origin.json and the repository are
            # read here, in the worker, never on the event loop.
            name = requested
            if not name:
                found = self.store.deployed(kind, ident)
                if found is None:
                    raise NotInstalled(
                        f"{kind} {ident} is not installed", data={"error": "NotInstalled"}
                    )
                name = found.remote
            if not name:
                raise InvalidParams("which remote? (remote)")
            remote = self.remote(str(name))
            return self.ops.install(
                kind,
                ident,
                remote,
                channel=channel,
                update=update,
                progress=progress,
                phase=phase,
                op=op.id,
            )

        return await self.run(
            peer, kind, "update" if update else "install", ident, work, on_progress
        )

    async def install_directory(
        self,
        peer: PeerCred | None,
        kind: Kind,
        ident: str,
        params: dict[str, Any],
        on_progress: Progress | None,
    ) -> Operation:
        """``install {appId, directory}``: the directory published into the local archive and
        installed from it (or, installed already, updated from it), as any install."""
        if params.get("remote"):
            raise InvalidParams("directory or remote, not both")
        allow_breaking = bool(params.get("allowBreaking", False))

        def work(op: Operation, progress: Any, phase: Any) -> Deployed:
            # in the worker (a caller's path may be slow to stat), after run() checked that
            # the caller is a manager: nothing of the directory is read before both
            directory = check_directory(params["directory"], peer, self.own_uid, self.store.root)
            found = self.store.deployed(kind, ident)
            channel = (
                found.ref.rsplit("/", 1)[1] if found else str(params.get("channel") or "stable")
            )
            phase("build", {})
            release = self.local.build(directory, channel)
            if release.app_id != ident:
                raise InvalidParams(f"{directory} is {release.app_id}, not {ident}")
            return self.ops.install(
                kind,
                ident,
                self.local.remote(),
                channel=channel,
                update=found is not None,
                progress=progress,
                phase=phase,
                op=op.id,
                allow_breaking=allow_breaking,
            )

        return await self.run(peer, kind, "install", ident, work, on_progress)

    async def rollback(
        self, peer: PeerCred | None, params: dict[str, Any], on_progress: Progress | None = None
    ) -> Operation:
        kind, ident = target_of(params)

        def work(op: Operation, progress: Any, phase: Any) -> Deployed:
            return self.ops.rollback(kind, ident, phase=phase, op=op.id)

        return await self.run(peer, kind, "rollback", ident, work, on_progress)

    async def remove(
        self, peer: PeerCred | None, params: dict[str, Any], on_progress: Progress | None = None
    ) -> Operation:
        kind, ident = target_of(params)
        keep = bool(params.get("keepData", False))

        def work(op: Operation, progress: Any, phase: Any) -> None:
            self.store.remove(kind, ident, keep_data=keep)
            self.store.prune()

        return await self.run(peer, kind, "remove", ident, work, on_progress)

    async def listing(self) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            return {
                "apps": [app_view(f) for f in self.store.installed("app")],
                "agents": [app_view(f) for f in self.store.installed("agent")],
            }

        deployed, _ = await self.os.state()
        if not (self.store.root / "repo").exists():
            return {"apps": [], "agents": [], "deployments": deployed}
        found = await asyncio.to_thread(read)
        return {**found, "deployments": deployed}

    async def status(self) -> dict[str, Any]:
        _, reboot = await self.os.state()
        return {"operations": self.core.operations(), "rebootRequired": reboot}

    async def history(self, params: dict[str, Any]) -> dict[str, Any]:
        kind, ident = target_of(params)
        origin = await asyncio.to_thread(self.store.origin, kind, ident)
        if origin is None:
            raise NotFound(f"{kind} {ident} is not installed", data={"error": "NotInstalled"})
        return {"appId": ident, "entries": origin.get("history", [])}


def target_of(params: dict[str, Any]) -> tuple[Kind, str]:
    target = params.get("target", "app")
    ident = params.get("appId")
    if target not in ("app", "agent"):
        raise InvalidParams(f"target {target!r}: app or agent here")
    if not isinstance(ident, str):
        raise InvalidParams("appId is required")
    check_id(target, ident)
    return target, ident


def methods(ctx: ServiceContext, updater: Updater) -> Methods:
    table = Methods()

    @table.method(GET_INFO)
    async def get_info(request: RequestContext) -> dict[str, Any]:
        return ctx.info()

    def progress_of(request: RequestContext) -> Progress:
        def send(op: Operation) -> None:
            task = asyncio.ensure_future(
                request.progress(op.percent(), 100, f"{op.phase} {op.bytes} bytes")
            )
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
        op = await updater.install(
            request.peer, params, update=False, on_progress=progress_of(request)
        )
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
        op = await updater.agents.export(request.peer, params, progress_of(request))
        return {"operation": op.view()}

    @table.method(NSID + "importAgent")
    async def import_agent(request: RequestContext, **params: Any) -> dict[str, Any]:
        op = await updater.agents.import_(request.peer, params, progress_of(request))
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
