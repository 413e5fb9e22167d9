"""The updater's operations on apps and agents, whatever asked for them (``updater.sock``
or the broker's tools): install (from a remote, or from a directory through the local archive),
update, rollback, remove, list, status, history; the remotes; recovery at start.

``gi`` is imported with the first operation that touches a repository, never at start: a start
with no journal left to recover costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from kiki_updater.bootc import Bootc
from kiki_updater.config import UpdaterConfig
from kiki_updater.core import Operation, UpdaterCore
from kiki_updater.gio import own_context
from kiki_updater.health import PATH as HEALTH_PATH
from kiki_updater.health import HealthGate
from kiki_updater.health_unit import stop_leftovers
from kiki_updater.journal import Journal, recover
from kiki_updater.local import LOCAL, LocalBuilds
from kiki_updater.operations import NotInstalled, Operations
from kiki_updater.os_updates import AgentMoves, OsUpdates
from kiki_updater.pull import Remote
from kiki_updater.running import Progress, Runner, Work
from kiki_updater.store import Deployed, Kind, Store, check_id
from libkiki.errors import InvalidParams, NotFound
from libkiki.paths import TOOLS_SOCKET, socket_path, state_dir
from libkiki.peer import PeerCred

__all__ = ["Updater", "app_view", "install_lexicons", "target_of"]

log = logging.getLogger(__name__)


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


def install_lexicons(
    kind: Kind, ident: str, deployment: Path, allow_breaking: bool
) -> dict[str, Any] | None:
    """The install step of an app: its manifest checked against the published lexicons, its
    lexicons, bindings and components installed (libkiki.lexicon.install, imported here: it
    brings the code generator); what it installed (``defs#installReport``)."""
    if kind != "app":
        return None
    from libkiki.lexicon.install import install_app
    from libkiki.lexicon.registry import Registry

    registry, _ = Registry.from_search_path(None)
    report = install_app(deployment, state_dir(), registry, allow_breaking=allow_breaking)
    return {
        "lexicons": list(report.lexicons),
        "module": report.module,
        "bindings": str(report.bindings),
        "componentsStored": list(report.components_stored),
        "componentsShared": list(report.components_shared),
    }


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
            health=HealthGate(broker or socket_path(TOOLS_SOCKET), config.health_runner),
            journal=self.journal,
        )
        self.local = LocalBuilds(root)
        self.own_uid = os.getuid()
        self.runner = Runner(
            self.core,
            managers=list(config.managers),
            own_uid=self.own_uid,
            max_operations=config.max_operations,
            progress_interval=config.progress_interval,
        )
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
        # a check a killed predecessor left running must not go on beside what recovery puts back
        stop_leftovers(HEALTH_PATH)
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

    async def run(
        self,
        peer: PeerCred | None,
        target: str,
        kind: str,
        app_id: str | None,
        work: Work,
        on_progress: Progress | None = None,
    ) -> Operation:
        """One operation, as :meth:`Runner.run <kiki_updater.running.Runner.run>` runs it."""
        return await self.runner.run(peer, target, kind, app_id, work, on_progress)

    def _prune_local(self) -> None:
        """Older local releases go (the store keeps what it rolls back to); a failure here
        is logged, never the operation's."""
        try:
            self.local.prune()
        except Exception:
            log.exception("pruning the local archive failed")

    def check_taken(self, name: str, dirfd: int, peer: PeerCred | None) -> None:
        """A caller's directory descriptor: the caller's own, outside this updater's state."""
        from kiki_updater.handover import check_taken
        from libkiki.paths import state_dir

        check_taken(name, dirfd, peer, self.own_uid, (self.store.root, state_dir()))

    # -- the operations ------------------------------------------------------------------------

    async def install(
        self,
        peer: PeerCred | None,
        params: dict[str, Any],
        *,
        update: bool,
        on_progress: Progress | None = None,
        directory_fd: int | None = None,
    ) -> Operation:
        """Install or update from a remote; ``install`` with ``directory`` takes
        ``directory_fd``, the descriptor the caller passed on ``updater.sock``."""
        kind, ident = target_of(params)
        check_id(kind, ident)
        if "directory" in params:
            if update:
                raise InvalidParams(
                    "update takes no directory: `install` with it updates an installed app"
                )
            if directory_fd is None:  # the broker's tools: no descriptors cross the broker
                raise InvalidParams(
                    "a directory install takes the directory's descriptor on updater.sock: "
                    "use `kiki app install DIR` on the device"
                )
            return await self.install_directory(
                peer, kind, ident, params, directory_fd, on_progress
            )
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
        dirfd: int,
        on_progress: Progress | None,
    ) -> Operation:
        """``install {appId, directory}``: the directory open at ``dirfd`` published into the
        local archive and installed from it (or, installed already, updated from it), as any
        install. ``directory`` is the caller's name for it, for messages only."""
        if params.get("remote"):
            raise InvalidParams("directory or remote, not both")
        allow_breaking = bool(params.get("allowBreaking", False))
        directory = str(params["directory"])

        def work(op: Operation, progress: Any, phase: Any) -> Deployed:
            # in the worker, after run() checked that the caller is a manager: nothing of the
            # directory is read before both
            self.check_taken("directory", dirfd, peer)
            found = self.store.deployed(kind, ident)
            channel = (
                found.ref.rsplit("/", 1)[1] if found else str(params.get("channel") or "stable")
            )
            phase("copy", {})
            try:
                self.local.build(dirfd, channel, ident, staged=lambda: phase("build", {}))
            except InvalidParams as exc:
                raise InvalidParams(f"{directory}: {exc}") from None
            try:
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
            finally:
                self._prune_local()

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
            found = self.store.deployed(kind, ident)
            self.store.remove(kind, ident, keep_data=keep)
            self.store.prune()
            if found is not None and found.remote == LOCAL:  # its directory builds too
                self.local.forget(found.ref)

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
