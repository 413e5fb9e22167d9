"""The updater's decisions without I/O: one operation per app, progress, who may manage."""

from __future__ import annotations

import pytest

from kiki_updater.core import FINISHED_KEPT, Busy, UpdaterCore, may_manage
from libkiki.errors import NotFound
from libkiki.peer import PeerCred

pytestmark = pytest.mark.unit

APP = "org.example.player"


def test_one_operation_per_app_at_a_time_and_others_run_beside_it() -> None:
    core = UpdaterCore()
    first = core.begin("app", "update", APP)
    with pytest.raises(Busy) as refused:
        core.begin("app", "rollback", APP)
    assert refused.value.data == {"error": "Busy", "operation": first.id}
    core.begin("app", "update", "org.example.other")
    core.begin("agent", "update", APP)  # an agent of the same id is another target
    core.end(first)
    assert core.begin("app", "rollback", APP).id != first.id


def test_listeners_hear_every_change_and_the_end() -> None:
    heard: list[tuple[str, str, int]] = []
    core = UpdaterCore()
    core.listeners.append(lambda op: heard.append((op.state, op.phase, op.percent())))
    op = core.begin("app", "install", APP)
    core.report(op, phase="pull", objects=50, objects_total=100)
    core.end(op, error=NotFound("gone", data={"error": "NotFound"}))
    assert heard == [("running", "queued", 0), ("running", "pull", 44), ("failed", "pull", 44)]
    view = core.operations()[0]
    assert (view["state"], view["error"], view["message"]) == ("failed", "NotFound", "gone")


def test_finished_operations_are_bounded() -> None:
    core = UpdaterCore()
    for _ in range(FINISHED_KEPT + 10):
        core.end(core.begin("app", "update", APP))
    assert len(core.operations()) == FINISHED_KEPT


def test_who_may_manage() -> None:
    root = PeerCred(pid=1, uid=0, gid=0)
    alice = PeerCred(pid=2, uid=1000, gid=1000)
    unit = PeerCred(pid=3, uid=61000, gid=61000, app_id="kiki-tool-broker")
    assert may_manage(root, [], own_uid=999)
    assert may_manage(unit, [], own_uid=999)
    assert not may_manage(alice, [], own_uid=999)
    assert may_manage(alice, ["uid:1000"], own_uid=999)
    assert may_manage(alice, [], own_uid=1000)  # the developer constellation: one user
