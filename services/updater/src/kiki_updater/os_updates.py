"""The OS operations of the service (``target: os``): bootc's status as deployments, upgrade
(or only check), switch to another image, rollback; each an operation like an app's (one at a
time, reported, journaled by bootc itself), run in a worker thread. Nothing reboots unless the
caller passed ``apply``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from kiki_updater.bootc import Bootc, deployments, reboot_required
from libkiki.errors import InvalidParams, Unavailable

if TYPE_CHECKING:
    from kiki_updater.core import Operation
    from kiki_updater.server import Progress, Updater

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
