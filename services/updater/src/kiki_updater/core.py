"""The updater's decisions, without I/O: which operations run, one per app at a time, what each
reports (phase, bytes, objects), who may change what, and who hears about it.

The server runs the blocking work in threads and reports into this from the event loop only.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from libkiki.errors import Conflict, PermissionDenied
from libkiki.peer import PeerCred
from libkiki.principals import is_kiki_service, matches

__all__ = ["Busy", "Operation", "UpdaterCore", "may_manage"]

FINISHED_KEPT = 64
# The share of the bar each phase starts at: a pull is most of an update's time and bytes.
PHASE_START = {
    "queued": 0,
    # a directory install: the caller's tree copied in, then published into the local archive
    # (local.py)
    "copy": 1,
    "build": 1,
    "pull-commit": 2,
    "verify": 5,
    "pull": 8,
    "checkout": 80,
    "install": 88,
    "swap": 92,
    "health": 94,
    "done": 100,
}


class Busy(Conflict):
    """Another operation on the same app or agent is running: this one is refused, not queued
    (a caller that wants to wait asks again when ``subscribeOperations`` says it ended)."""


@dataclass
class Operation:
    id: str
    target: str  # os, app, agent
    kind: str  # install, update, rollback, remove, export, import, upgrade, switch
    app_id: str | None
    state: str = "running"
    phase: str = "queued"
    bytes: int = 0
    objects: int = 0
    objects_total: int = 0
    commit: str | None = None
    message: str | None = None
    error: str | None = None
    # what the install step installed (defs#installReport), how the health check ran
    # (defs#healthCheck)
    install: dict[str, Any] | None = None
    health: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        return f"{self.target}/{self.app_id or ''}"

    def percent(self) -> int:
        start = PHASE_START.get(self.phase, 0)
        if self.phase == "pull" and self.objects_total:
            span = PHASE_START["checkout"] - start
            return start + span * min(self.objects, self.objects_total) // self.objects_total
        return start

    def view(self) -> dict[str, Any]:
        """``dev.kiki.update.defs#operation``."""
        out: dict[str, Any] = {
            "id": self.id,
            "target": self.target,
            "kind": self.kind,
            "state": self.state,
            "phase": self.phase,
            "progressPercent": 100 if self.state == "succeeded" else self.percent(),
            "bytes": self.bytes,
            "objects": self.objects,
            "objectsTotal": self.objects_total,
        }
        for key, value in (
            ("appId", self.app_id),
            ("commit", self.commit),
            ("message", self.message),
            ("error", self.error),
            ("install", self.install),
            ("health", self.health),
        ):
            if value is not None:
                out[key] = value
        return out


@dataclass
class UpdaterCore:
    listeners: list[Callable[[Operation], None]] = field(default_factory=list)
    running: dict[str, Operation] = field(default_factory=dict)
    finished: OrderedDict[str, Operation] = field(default_factory=OrderedDict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def begin(self, target: str, kind: str, app_id: str | None) -> Operation:
        """A new running operation; :class:`Busy` when one on the same target runs."""
        op = Operation(f"op-{next(self._ids)}", target, kind, app_id)
        if op.key in self.running:
            other = self.running[op.key]
            raise Busy(
                f"{target} {app_id or ''} is busy: {other.kind} {other.id} is running".replace(
                    "  ", " "
                ),
                data={"error": "Busy", "operation": other.id},
            )
        self.running[op.key] = op
        self._tell(op)
        return op

    def report(self, op: Operation, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(op, name, value)
        self._tell(op)

    def end(self, op: Operation, *, error: BaseException | None = None) -> None:
        self.running.pop(op.key, None)
        if error is None:
            op.state, op.phase = "succeeded", "done"
        else:
            op.state = "failed"
            op.message = str(error)[:1024]
            data = getattr(error, "data", None)
            op.error = data.get("error") if isinstance(data, dict) else type(error).__name__
            if isinstance(data, dict) and isinstance(data.get("health"), dict):
                op.health = data["health"]
        self.finished[op.id] = op
        while len(self.finished) > FINISHED_KEPT:
            self.finished.popitem(last=False)
        self._tell(op)

    def operations(self) -> list[dict[str, Any]]:
        """Running ones first, then the most recent finished ones."""
        return [op.view() for op in self.running.values()] + [
            op.view() for op in reversed(self.finished.values())
        ]

    def _tell(self, op: Operation) -> None:
        for listener in list(self.listeners):
            listener(op)


def may_manage(peer: PeerCred, managers: list[str], own_uid: int) -> bool:
    """Whether ``peer`` may change what is installed (install, update, rollback, remove, the
    OS): Kiki's own services (root, this service's uid, a ``kiki-*`` system unit) and whoever
    a principal in ``managers`` names. Anyone who can connect may read."""
    if is_kiki_service(peer, own_uid):
        return True
    return any(matches(text, peer) for text in managers)


def require_manager(peer: PeerCred, managers: list[str], own_uid: int, what: str) -> None:
    if not may_manage(peer, managers, own_uid):
        raise PermissionDenied(f"{what} needs a manager (the updater's manage policy)")
