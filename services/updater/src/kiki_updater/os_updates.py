"""The OS operations of the service (``target: os``): bootc's status as deployments, upgrade
(or only check), switch to another image, rollback; each an operation like an app's (one at a
time, reported), run in a worker thread. Nothing reboots unless the caller passed ``apply``.
And agents moved (:class:`AgentMoves`): export to and import from a directory of delta files."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from kiki_updater.bootc import Bootc, deployments, reboot_required
from kiki_updater.names import is_name
from libkiki.errors import InvalidParams, Unavailable

if TYPE_CHECKING:
    from kiki_updater.core import Operation
    from kiki_updater.running import Progress
    from kiki_updater.updater import Updater

__all__ = ["OsUpdates"]


def _last_line(text: str) -> str | None:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:1024] if lines else None


class OsUpdates:
    def __init__(self, updater: Updater, bootc: Bootc) -> None:
        self.updater = updater
        self.bootc = bootc

    async def state(self) -> tuple[list[dict[str, Any]], bool]:
        """The deployments and whether a reboot is pending; none on a system without bootc."""
        try:
            doc = await asyncio.to_thread(self.bootc.status)
        except Unavailable:
            return [], False
        return deployments(doc), reboot_required(doc)

    async def _run(
        self, peer: Any, kind: str, call: Callable[[], str], on_progress: Progress | None
    ) -> Operation:
        said: list[str] = []

        def work(op: Operation, progress: Any, phase: Callable[..., None]) -> None:
            phase(kind, {})
            said.append(call())

        op = await self.updater.run(peer, "os", kind, None, work, on_progress)
        op.message = _last_line(said[0]) if said else None
        return op

    def upgrade(
        self, peer: Any, params: dict[str, Any], on_progress: Progress | None
    ) -> Awaitable[Operation]:
        check = bool(params.get("checkOnly", False))
        apply = bool(params.get("apply", False))
        if check and apply:
            raise InvalidParams("checkOnly and apply together: which one?")
        return self._run(
            peer,
            "check" if check else "upgrade",
            lambda: self.bootc.upgrade(check=check, apply=apply),
            on_progress,
        )

    def switch(
        self, peer: Any, params: dict[str, Any], on_progress: Progress | None
    ) -> Awaitable[Operation]:
        image = params.get("image")
        if not isinstance(image, str) or not image or image.startswith("-"):
            raise InvalidParams("image: a container image reference")
        apply = bool(params.get("apply", False))
        return self._run(peer, "switch", lambda: self.bootc.switch(image, apply=apply), on_progress)

    def rollback(
        self, peer: Any, params: dict[str, Any], on_progress: Progress | None
    ) -> Awaitable[Operation]:
        apply = bool(params.get("apply", False))
        return self._run(peer, "rollback", lambda: self.bootc.rollback(apply=apply), on_progress)


class AgentMoves:
    """``exportAgent`` and ``importAgent``: an installed agent's code (``current``) and state
    (``data/``) as delta files in a directory, and such a directory deployed here."""

    def __init__(self, updater: Updater) -> None:
        self.updater = updater

    def _taken(self, name: str, where: object, dirfd: int | None, peer: Any) -> None:
        """The directory ``name`` names is taken only as the descriptor its caller passed on
        ``updater.sock`` (no descriptor crosses the broker), a directory the caller owns."""
        if not isinstance(where, str) or not where:
            raise InvalidParams(f"{name}: the caller's name for the directory")
        if dirfd is None:
            raise InvalidParams(
                f"{name}: the directory's descriptor is passed on updater.sock: use "
                "`kiki agent export|import|move` on the device"
            )
        self.updater.check_taken(name, dirfd, peer)

    async def export(
        self,
        peer: Any,
        params: dict[str, Any],
        on_progress: Progress | None,
        out_fd: int | None = None,
    ) -> Operation:
        """``out_fd``: the descriptor of the caller's directory ``out`` names; the deltas are
        written into it 0600, owned by the caller."""
        from kiki_updater.agents import export_agent
        from kiki_updater.updater import target_of

        _, ident = target_of({**params, "target": "agent"})
        self._taken("out", params.get("out"), out_fd, peer)
        assert out_fd is not None
        owner = (peer.uid, peer.gid) if peer is not None and os.geteuid() == 0 else None
        destination = str(params.get("destination") or "default")
        if not is_name(destination):
            raise InvalidParams("destination: a name (letters, digits, _ . -)")
        config = self.updater.config
        secret = config.agent_secret_key.read_text().strip() if config.agent_secret_key else None
        store = self.updater.store
        home = store.home("agent", ident)
        sizes: list[int] = []

        def work(op: Operation, progress: Any, phase: Callable[..., None]) -> None:
            if store.current("agent", ident) is None:
                from libkiki.errors import NotFound

                raise NotFound(f"agent {ident} is not installed", data={"error": "NotInstalled"})
            phase("export", {})
            moved = export_agent(
                store,
                ident,
                (home / "current").resolve(),
                home / "data",
                out_fd,
                destination=destination,
                secret=secret,
                full=bool(params.get("full", False)),
                owner=owner,
            )
            sizes.append(moved.bytes)

        op = await self.updater.run(peer, "agent", "export", ident, work, on_progress)
        op.bytes = sizes[0] if sizes else 0
        return op

    async def import_(
        self,
        peer: Any,
        params: dict[str, Any],
        on_progress: Progress | None,
        source_fd: int | None = None,
    ) -> Operation:
        """``source_fd``: the descriptor of the caller's directory ``source`` names."""
        from kiki_updater.agents import import_journaled
        from kiki_updater.signing import SignatureRefused
        from kiki_updater.updater import target_of

        _, ident = target_of({**params, "target": "agent"})
        self._taken("source", params.get("source"), source_fd, peer)
        assert source_fd is not None
        keys = tuple(self.updater.config.agent_keys)
        if not keys:
            raise SignatureRefused("no agent key is trusted here (agent_keys)")

        def work(op: Operation, progress: Any, phase: Callable[..., None]) -> Any:
            updater = self.updater

            def undo(ref: str, before: str | None, before_previous: str | None) -> None:
                updater.ops.undo("agent", ident, ref, before, before_previous, action="undone")

            # journaled step by step: a crash anywhere leaves the old agent or the new one,
            # whole (agents.import_journaled; recovery at the next start)
            return import_journaled(
                updater.store,
                updater.journal,
                ident,
                source_fd,
                keys=keys,
                undo=undo,
                op=op.id,
                phase=phase,
            )

        return await self.updater.run(peer, "agent", "import", ident, work, on_progress)
