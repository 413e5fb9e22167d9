"""Running one operation (running.Runner): only for a manager, its work in a worker thread with
a GLib context of its own, its phases and its pull's progress reported as the work goes."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from kiki_updater.core import Operation, UpdaterCore
from kiki_updater.gio import lib
from kiki_updater.running import Phase, Runner
from libkiki.errors import PermissionDenied
from libkiki.peer import PeerCred

pytestmark = pytest.mark.unit

OWN_UID = 990


def _runner() -> Runner:
    return Runner(
        UpdaterCore(),
        managers=["uid:1000"],
        own_uid=OWN_UID,
        max_operations=1,
        progress_interval=0.01,
    )


def test_a_caller_who_is_no_manager_is_refused_before_any_work() -> None:
    ran: list[str] = []

    def work(op: Operation, progress: Any, phase: Phase) -> None:
        ran.append("work")

    runner = _runner()
    with pytest.raises(PermissionDenied, match="install of app needs a manager"):
        asyncio.run(runner.run(PeerCred(1, 4321, 4321), "app", "install", "org.x.y", work))
    assert ran == []
    assert runner.core.operations() == []
    done = asyncio.run(runner.run(PeerCred(1, 1000, 1000), "app", "install", "org.x.y", work))
    assert (ran, done.state) == (["work"], "succeeded")


def test_phases_and_the_pulls_bytes_are_reported_while_the_work_runs() -> None:
    seen: list[tuple[str, int]] = []
    heard_bytes = threading.Event()
    threads: list[threading.Thread] = []

    def on_progress(op: Operation) -> None:
        seen.append((op.phase, op.bytes))
        if op.bytes == 4096:
            heard_bytes.set()

    def work(op: Operation, progress: Any, phase: Phase) -> None:
        threads.append(threading.current_thread())
        phase("pull", {})
        progress.set_variant("bytes-transferred", lib().GLib.Variant("t", 4096))
        # the event loop reads the progress while the pull runs, as a real pull's
        assert heard_bytes.wait(30), "the pull's bytes were never reported"
        phase("swap", {"commit": "ab" * 32})

    op = asyncio.run(_runner().run(None, "app", "install", "org.x.y", work, on_progress))
    assert threads
    assert threads[0] is not threading.main_thread()
    assert ("pull", 4096) in seen
    assert op.state == "succeeded"
    assert op.commit == "ab" * 32
    assert seen[-1][0] == "done"
