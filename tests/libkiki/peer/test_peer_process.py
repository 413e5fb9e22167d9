"""libkiki.peer.process_app: a process's app id by a pid someone vouches for, verified alive."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from libkiki.peer import MAX_CGROUP_FILE, app_id_from_cgroup, process_app

pytestmark = pytest.mark.integration


def test_a_live_process_is_named_by_its_cgroup() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        expected = app_id_from_cgroup(Path(f"/proc/{child.pid}/cgroup").read_text(), os.getuid())
        assert process_app(child.pid, os.getuid()) == expected
    finally:
        child.kill()
        child.wait()


def test_a_process_gone_is_told_not_named() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the pid names nothing (or, later, some other process)
    with pytest.raises(ProcessLookupError):
        process_app(child.pid, os.getuid())


def test_a_process_that_exits_while_its_cgroup_is_read_is_told(tmp_path: Path) -> None:
    # The cgroup comes from a copy of /proc that outlives the process: the pidfd, opened
    # before the read, says it has exited, whatever the read found.
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    (tmp_path / str(child.pid)).mkdir()
    (tmp_path / str(child.pid) / "cgroup").write_text("0::/system.slice/app-x.service\n")
    pidfd = os.pidfd_open(child.pid)
    assert child.stdin is not None
    child.stdin.close()
    child.wait()
    with pytest.raises(ProcessLookupError):
        process_app(child.pid, os.getuid(), tmp_path, pidfd=pidfd)


def test_a_cgroup_file_longer_than_one_read_is_read_whole(tmp_path: Path) -> None:
    # cgroup v1 hierarchies first, each line with a long path: the unified line comes last.
    lines = [f"{i}:controller{i}:/{'x' * 200}/{i}" for i in range(1, 80)]
    text = "\n".join([*lines, "0::/system.slice/kiki-a11y-server.service", ""])
    assert len(text) > 3 * 4096
    (tmp_path / str(os.getpid())).mkdir()
    (tmp_path / str(os.getpid()) / "cgroup").write_text(text)
    assert process_app(os.getpid(), os.getuid(), tmp_path) == (
        "kiki-a11y-server",
        "kiki-a11y-server.service",
        None,
    )


def test_a_hidden_cgroup_gives_no_app_id_to_a_live_process(tmp_path: Path) -> None:
    # /proc mounted hidepid=, or ProtectProc=: the process is alive, its cgroup unreadable.
    assert process_app(os.getpid(), os.getuid(), tmp_path) == (None, None, None)


def test_a_cgroup_path_that_is_not_utf8_is_read_not_raised(tmp_path: Path) -> None:
    # A user names the cgroups of its own delegated subtree with any bytes: identification must
    # still answer (the server logged a traceback per connection); the path keeps its shape.
    cgroup = b"0::/user.slice/user-1000.slice/user@1000.service/app.slice/\xff\xfe.scope\n"
    (tmp_path / str(os.getpid())).mkdir()
    (tmp_path / str(os.getpid()) / "cgroup").write_bytes(cgroup)
    assert process_app(os.getpid(), 1000, tmp_path) == (None, "\ufffd\ufffd.scope", None)


def test_a_cgroup_file_past_its_bound_names_no_app(tmp_path: Path) -> None:
    # Whatever /proc gives: past the bound the innermost unit could be cut off, so no app.
    deep = "/".join(["d"] * (MAX_CGROUP_FILE // 2))
    text = f"0::/user.slice/user-1000.slice/user@1000.service/app-x.service/{deep}/app-y.scope\n"
    (tmp_path / str(os.getpid())).mkdir()
    (tmp_path / str(os.getpid()) / "cgroup").write_text(text)
    assert process_app(os.getpid(), 1000, tmp_path) == (None, None, None)


def test_a_cgroup_nested_past_path_max_names_no_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel will not print a cgroup path past PATH_MAX: reading the file fails with
    # ENAMETOOLONG (proc_cgroup_show). A live process nested that deep is no app, not an error.
    (tmp_path / str(os.getpid())).mkdir()
    (tmp_path / str(os.getpid()) / "cgroup").write_text("0::/system.slice/kiki-x.service\n")
    real_read = os.read

    def too_long(fd: int, n: int) -> bytes:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path)):
            raise OSError(errno.ENAMETOOLONG, "File name too long")
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", too_long)
    assert process_app(os.getpid(), os.getuid(), tmp_path) == (None, None, None)
