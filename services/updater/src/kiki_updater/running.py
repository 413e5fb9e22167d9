"""Running one operation: its blocking work in a worker thread with a GLib main context of its
own, at most ``max_operations`` at once, its phases and its pull's progress reported.

Every libostree call blocks, so each operation runs in :func:`asyncio.to_thread` inside
:func:`~kiki_updater.gio.in_own_context`, behind a semaphore; the core refuses a second
operation on an app that has one running (:class:`~kiki_updater.core.Busy`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from kiki_updater.core import Operation, UpdaterCore, require_manager
from kiki_updater.gio import in_own_context
from kiki_updater.store import Deployed
from libkiki.peer import PeerCred

__all__ = ["Phase", "Progress", "Runner", "Work"]

Progress = Callable[[Operation], Any]
Phase = Callable[[str, dict[str, Any]], None]
# work(op, progress holder, phase): runs in the worker; what it deployed, if anything
Work = Callable[[Operation, Any, Phase], Deployed | None]


class Runner:
    def __init__(
        self,
        core: UpdaterCore,
        *,
        managers: list[str],
        own_uid: int,
        max_operations: int,
        progress_interval: float,
    ) -> None:
        self.core = core
        self.managers = managers
        self.own_uid = own_uid
        self.slots = asyncio.Semaphore(max_operations)
        self.progress_interval = progress_interval

    async def run(
        self,
        peer: PeerCred | None,
        target: str,
        kind: str,
        app_id: str | None,
        work: Work,
        on_progress: Progress | None = None,
    ) -> Operation:
        """Run ``work(op, progress, phase)`` in a worker thread as the operation ``kind`` on
        ``app_id``, reporting its phases and its pull's progress; the finished operation."""
        if peer is not None:
            require_manager(peer, self.managers, self.own_uid, f"{kind} of {target}")
        op = self.core.begin(target, kind, app_id)
        loop = asyncio.get_running_loop()

        def report(**changes: Any) -> None:
            self.core.report(op, **changes)
            if on_progress is not None:
                on_progress(op)

        def phase(name: str, info: dict[str, Any]) -> None:  # from the worker thread
            changes: dict[str, Any] = {"phase": name}
            # the install step's report, how the health check ran: kept by the operation
            for key in ("commit", "install", "health"):
                if info.get(key):
                    changes[key] = info[key]
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
            await asyncio.sleep(self.progress_interval)
            if op.phase != "pull" or not holder:
                continue
            now = snapshot(holder[0])
            if now != last:
                last = now
                report(bytes=now.bytes, objects=now.objects, objects_total=now.objects_total)
