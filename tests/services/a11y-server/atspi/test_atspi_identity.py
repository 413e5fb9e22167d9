"""Which app a bus name is: the bus daemon's answers (pid, uid) decide whether it is bridged."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kiki_a11y_server.atspi.identity import OtherUsersApp, app_from
from libkiki.peer import app_id_from_cgroup

pytestmark = pytest.mark.unit


def _gone_pid() -> int:
    # Above pid_max no process can have it: the pid of a process gone for good.
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


def test_another_users_connection_is_not_bridged() -> None:
    # A root GUI app on the user's display reaches the accessibility bus: its connection is
    # uid 0's, and a bridge of uid 1000 must not publish it as one of its own user's trees.
    with pytest.raises(OtherUsersApp) as caught:
        app_from(":1.42", os.getpid(), 0, own_uid=1000)
    assert caught.value.uid == 0


def test_another_user_is_told_apart_from_a_process_gone() -> None:
    # Gone: nothing to name (None), not "another user's".
    assert app_from(":1.43", _gone_pid(), os.getuid()) is None
    # Another user's is refused before its process is even looked at.
    with pytest.raises(OtherUsersApp):
        app_from(":1.43", _gone_pid(), os.getuid() + 1)


def test_the_bridges_own_users_app_is_named_by_its_cgroup() -> None:
    pid, uid = os.getpid(), os.getuid()
    app = app_from(":1.44", pid, uid)
    assert app is not None
    expected, unit, _ = app_id_from_cgroup(Path(f"/proc/{pid}/cgroup").read_text(), uid)
    # No app id: the bridge leaves it empty and the server names the tree pid-<pid>.
    assert (app.app_id, app.pid, app.uid, app.unit) == (expected or "", pid, uid, unit or "")
