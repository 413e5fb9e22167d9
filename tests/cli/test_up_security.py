"""`kiki up`'s sockets are the developer's, as the device's are root's and kiki's.

A throw-away second user (``kiki-test-attacker``, created if missing and left for the other tests
that use it) tries to connect to every socket of a running constellation and is refused, while
the developer's own user connects; the runtime directory is made safe before anything is put in
it. Needs root (to create and become that user).
"""

from __future__ import annotations

import errno
import grp
import json
import os
import pwd
import socket
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kikitest import VENV_BIN, kiki
from libkiki.errors import PermissionDenied
from libkiki.paths import SOCKET_NAMES
from libkiki.private_dir import ensure_private_dir

ATTACKER = "kiki-test-attacker"
SHARE_GROUP = "kiki-test-share"
SERVICE_SOCKETS = tuple(SOCKET_NAMES.values())

# useradd/groupadd exit 9 when the name exists: another test may have created it meanwhile.
_NAME_IN_USE = 9

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="creates and becomes a second user"),
]


@pytest.fixture(scope="session")
def attacker() -> pwd.struct_passwd:
    with_shell = ["--shell", "/usr/sbin/nologin"]
    made = subprocess.run(
        ["useradd", "--system", "--no-create-home", *with_shell, ATTACKER],
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode in (0, _NAME_IN_USE), made.stderr
    return pwd.getpwnam(ATTACKER)


@pytest.fixture(scope="session")
def share_group() -> grp.struct_group:
    made = subprocess.run(
        ["groupadd", "--system", SHARE_GROUP], capture_output=True, text=True, check=False
    )
    assert made.returncode in (0, _NAME_IN_USE), made.stderr
    return grp.getgrnam(SHARE_GROUP)


def connect_as(
    user: pwd.struct_passwd, paths: list[Path], groups: tuple[int, ...] = ()
) -> dict[str, int]:
    """Connect to each socket from a child process running as ``user`` (with only ``groups``
    besides its own); 0 for a connection made, else the errno."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to the user, try, report, and never return into pytest
        status = 1
        try:
            os.close(read_end)
            os.setgroups(list(groups))
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            results: dict[str, int] = {}
            for path in paths:
                kind = socket.SOCK_DGRAM if path.parent.name == ".notify" else socket.SOCK_STREAM
                with socket.socket(socket.AF_UNIX, kind) as sock:
                    try:
                        sock.connect(str(path))
                        results[str(path)] = 0
                    except OSError as exc:
                        results[str(path)] = exc.errno or -1
            os.write(write_end, json.dumps(results).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child as the second user failed"
    found: dict[str, int] = json.loads(data)
    return found


def sockets_in(rundir: Path) -> list[Path]:
    return sorted(p for p in rundir.rglob("*") if _is_socket(p))


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.lstat().st_mode)
    except FileNotFoundError:  # kiki up's up.tmp, renamed to up.json while we looked
        return False


def start_up(rundir: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            str(VENV_BIN / "kiki"),
            "up",
            *args,
            "--runtime-dir",
            str(rundir),
            "--state-dir",
            str(rundir.parent / "state"),
            "--relay-port",
            "0",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop_up(proc: subprocess.Popen[str]) -> str:
    """Stop `kiki up` (if still running); its output, the first time."""
    assert proc.stdout is not None
    if proc.stdout.closed:
        return ""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.stdout is not None
    output = proc.stdout.read()
    proc.stdout.close()
    return output


def wait_ready(rundir: Path, services: set[str], proc: subprocess.Popen[str]) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, stop_up(proc)
        try:
            state: dict[str, Any] = json.loads((rundir / "up.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            state = {}
        found = state.get("services", {})
        if set(found) == services and all(s["state"] == "ready" for s in found.values()):
            return state
        time.sleep(0.05)
    raise AssertionError(f"not all of {services} ready within 90s: {stop_up(proc)}")


@pytest.fixture
def open_parent(sockdir: Path, service_env: dict[str, str]) -> tuple[Path, dict[str, str]]:
    # A parent anyone may enter (like /run for /run/kiki), so that only what `kiki up` does to
    # its own directory and sockets keeps the second user out.
    sockdir.chmod(0o755)
    env = dict(service_env)
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)  # so that kiki up starts its private bus
    return sockdir / "run", env


def test_a_second_user_cannot_connect_to_any_socket_of_kiki_up(
    open_parent: tuple[Path, dict[str, str]], attacker: pwd.struct_passwd
) -> None:
    rundir, env = open_parent
    proc = start_up(rundir, env, "--no-demo")
    try:
        state = wait_ready(
            rundir,
            {
                "tool-broker",
                "a11y-server",
                "sensor-publisher",
                "dbus-gateway",
                "sync-relay",
                "updater",
            },
            proc,
        )
        paths = sockets_in(rundir)
        assert connect_as(attacker, paths) == {str(p): errno.EACCES for p in paths}
        names = {p.name for p in paths}
        assert {*SERVICE_SOCKETS, "bus.sock", "tool-broker"} <= names, names

        # What keeps them out: the modes of the units, with our user and group.
        st = rundir.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, os.getuid(), os.getgid())
        for name in SERVICE_SOCKETS:
            st = (rundir / name).lstat()
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (
                0o660,
                os.getuid(),
                os.getgid(),
            ), name
        # The private bus listens in there too, not on an abstract socket anyone can reach.
        assert state["busAddress"].startswith(f"unix:path={rundir / 'bus.sock'},")

        # The developer's own user connects to every listening socket.
        for path in paths:
            if path.parent.name != ".notify":
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.connect(str(path))
    finally:
        output = stop_up(proc)
    assert "all 6 services ready" in output


def test_group_members_may_connect_when_kiki_up_shares_with_a_group(
    open_parent: tuple[Path, dict[str, str]],
    attacker: pwd.struct_passwd,
    share_group: grp.struct_group,
) -> None:
    rundir, env = open_parent
    proc = start_up(rundir, env, "tool-broker", "--no-demo", "--group", SHARE_GROUP)
    try:
        wait_ready(rundir, {"tool-broker"}, proc)
        tools = rundir / "tools.sock"
        assert rundir.stat().st_gid == tools.stat().st_gid == share_group.gr_gid
        assert stat.S_IMODE(tools.stat().st_mode) == 0o660
        assert connect_as(attacker, [tools], groups=(share_group.gr_gid,)) == {str(tools): 0}
        assert connect_as(attacker, [tools]) == {str(tools): errno.EACCES}
    finally:
        stop_up(proc)


def test_a_group_that_does_not_exist_is_a_usage_error(sockdir: Path) -> None:
    result = kiki("up", "--runtime-dir", str(sockdir / "run"), "--group", "no-such-group-here")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "no group named no-such-group-here" in result.stderr


def test_kiki_up_refuses_a_planted_symlink_for_its_directory(
    sockdir: Path, service_env: dict[str, str]
) -> None:
    target = sockdir / "elsewhere"
    target.mkdir(mode=0o755)
    rundir = sockdir / "run"
    rundir.symlink_to(target)
    proc = start_up(rundir, service_env, "tool-broker", "--no-demo")
    try:
        proc.wait(timeout=60)
    finally:
        output = stop_up(proc)
    assert proc.returncode == 1, output
    assert output == f"kiki up: {rundir} is not a directory (a symlink?); refusing it\n"
    assert list(target.iterdir()) == []
    assert stat.S_IMODE(target.stat().st_mode) == 0o755


# -- the directory itself ------------------------------------------------------------------------


def test_a_new_directory_is_created_0750_with_our_group(sockdir: Path) -> None:
    rundir = sockdir / "a" / "run"
    assert ensure_private_dir(rundir) is None
    st = rundir.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, os.getuid(), os.getegid())


def test_an_older_kiki_ups_0755_directory_is_narrowed(sockdir: Path) -> None:
    rundir = sockdir / "run"
    rundir.mkdir()
    rundir.chmod(0o755)
    (rundir / "up.json").write_text("{}")
    assert ensure_private_dir(rundir) == 0o755
    assert stat.S_IMODE(rundir.stat().st_mode) == 0o750
    assert ensure_private_dir(rundir) is None  # nothing left to narrow
    rundir.chmod(0o700)
    assert ensure_private_dir(rundir) is None  # narrower than asked is kept
    assert stat.S_IMODE(rundir.stat().st_mode) == 0o700


def test_a_directory_of_another_user_is_refused(sockdir: Path, attacker: pwd.struct_passwd) -> None:
    rundir = sockdir / "run"
    rundir.mkdir(mode=0o700)
    os.chown(rundir, attacker.pw_uid, attacker.pw_gid)
    with pytest.raises(PermissionDenied, match=f"belongs to uid {attacker.pw_uid}, not to you"):
        ensure_private_dir(rundir)
    assert rundir.stat().st_uid == attacker.pw_uid


def test_a_directory_others_could_write_is_refused_when_they_left_something(
    sockdir: Path, attacker: pwd.struct_passwd
) -> None:
    rundir = sockdir / "run"
    rundir.mkdir()
    rundir.chmod(0o777)
    planted = rundir / "up.tmp"
    planted.symlink_to("/etc/passwd")
    os.chown(planted, attacker.pw_uid, attacker.pw_gid, follow_symlinks=False)
    with pytest.raises(PermissionDenied, match=r"up\.tmp belongs to uid"):
        ensure_private_dir(rundir)
    # Refused again on the next try, though the first narrowed the mode.
    assert stat.S_IMODE(rundir.stat().st_mode) == 0o750
    with pytest.raises(PermissionDenied, match=r"up\.tmp belongs to uid"):
        ensure_private_dir(rundir)
    # Without anything planted, the same directory is repaired.
    planted.unlink()
    (rundir / "mine").write_text("")
    rundir.chmod(0o777)
    assert ensure_private_dir(rundir) == 0o777
    assert stat.S_IMODE(rundir.stat().st_mode) == 0o750


def test_a_parent_others_can_write_without_the_sticky_bit_is_refused(
    sockdir: Path, attacker: pwd.struct_passwd
) -> None:
    parent = sockdir / "shared"
    parent.mkdir()
    parent.chmod(0o777)
    with pytest.raises(PermissionDenied, match="writable by others"):
        ensure_private_dir(parent / "run")
    parent.chmod(0o1777)  # like /tmp: others cannot rename our entries
    ensure_private_dir(parent / "run")
    os.chown(parent, attacker.pw_uid, attacker.pw_gid)
    with pytest.raises(PermissionDenied, match=f"{parent} belongs to uid"):
        ensure_private_dir(parent / "run")


def test_a_file_in_the_way_is_refused(sockdir: Path) -> None:
    (sockdir / "run").write_text("")
    with pytest.raises(PermissionDenied, match="is not a directory"):
        ensure_private_dir(sockdir / "run")


def test_a_symlink_of_another_user_on_the_way_is_refused(
    sockdir: Path, attacker: pwd.struct_passwd
) -> None:
    # The owner of a symlink in a sticky directory may replace it, and so redirect the path.
    real = sockdir / "real"
    real.mkdir()
    link = sockdir / "link"
    link.symlink_to(real)
    os.chown(link, attacker.pw_uid, attacker.pw_gid, follow_symlinks=False)
    with pytest.raises(PermissionDenied, match=f"{link} belongs to uid {attacker.pw_uid}"):
        ensure_private_dir(link / "run")
    assert not (real / "run").exists()
    os.chown(link, os.getuid(), os.getgid(), follow_symlinks=False)
    ensure_private_dir(link / "run")
    assert stat.S_IMODE((real / "run").stat().st_mode) == 0o750


def test_a_parent_writable_by_a_group_not_ours_is_refused(
    sockdir: Path, share_group: grp.struct_group
) -> None:
    parent = sockdir / "team"
    parent.mkdir()
    os.chown(parent, -1, share_group.gr_gid)
    parent.chmod(0o770)
    with pytest.raises(PermissionDenied, match="writable by others"):
        ensure_private_dir(parent / "run")
    os.chown(parent, -1, os.getegid())  # a user private group, as most distributions make
    ensure_private_dir(parent / "run")
