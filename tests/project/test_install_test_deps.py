"""``scripts/install-test-deps`` waits (bounded) while another apt or dpkg holds apt's locks.

The script runs the real apt-get and dpkg, but against a private root in ``tmp_path``
(``APT_CONFIG``: its own package lists, a ``file:`` repository holding one empty package, and
dpkg ``--root``), so nothing reaches the network or this machine's package database. Another
process holds that root's locks the way apt does (``fcntl`` record locks) while the script runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kikitest import REPO

PACKAGE = "kiki-lock-probe"

HOLDER = """
import fcntl, os, sys
fds = {}
for path in sys.argv[1:]:
    fds[path] = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    fcntl.lockf(fds[path], fcntl.LOCK_EX | fcntl.LOCK_NB)
print("held", flush=True)
for line in sys.stdin:
    fcntl.lockf(fds[line.strip()], fcntl.LOCK_UN)
    print("released", flush=True)
"""

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="the script installs only as root"),
]


@pytest.fixture
def apt_root(tmp_path: Path) -> Path:
    missing = [t for t in ("apt-get", "dpkg-deb", "dpkg-scanpackages") if not shutil.which(t)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed (apt, dpkg-dev)")
    root = tmp_path / "root"
    for d in (
        "etc/apt/apt.conf.d",
        "etc/apt/preferences.d",
        "etc/apt/sources.list.d",
        "etc/apt/trusted.gpg.d",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
        "var/log/apt",
        "repo",
        "pkg/DEBIAN",
    ):
        (root / d).mkdir(parents=True)
    (root / "var/lib/dpkg/status").touch()
    (root / "pkg/DEBIAN/control").write_text(
        f"Package: {PACKAGE}\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: Kiki tests <tests@kiki.invalid>\n"
        "Description: an empty package installed into a test's private dpkg root\n"
    )
    subprocess.run(
        ["dpkg-deb", "--build", "--root-owner-group", str(root / "pkg"), str(root / "repo")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    packages = subprocess.run(
        ["dpkg-scanpackages", ".", "/dev/null"],
        cwd=root / "repo",
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    (root / "repo/Packages").write_bytes(packages)
    (root / "etc/apt/sources.list").write_text(f"deb [trusted=yes] file:{root}/repo ./\n")
    (root / "apt.conf").write_text(
        f'Dir "{root}/";\n'
        f'Dir::State::status "{root}/var/lib/dpkg/status";\n'
        f'Dir::Etc::parts "{root}/etc/apt/apt.conf.d/";\n'
        f'DPkg::Options {{ "--root={root}"; "--log={root}/var/log/dpkg.log"; }};\n'
        'APT::Sandbox::User "root";\n'
    )
    return root


@pytest.fixture
def holder(apt_root: Path) -> Iterator[subprocess.Popen[str]]:
    """A process holding the lists lock and both dpkg locks until told to let go of each."""
    locks = [
        apt_root / "var/lib/apt/lists/lock",
        apt_root / "var/lib/dpkg/lock-frontend",
        apt_root / "var/lib/dpkg/lock",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, *map(str, locks)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "held\n"
    yield proc
    proc.kill()
    proc.wait(timeout=10)


def _release(holder: subprocess.Popen[str], lock: Path) -> None:
    assert holder.stdin is not None
    assert holder.stdout is not None
    holder.stdin.write(f"{lock}\n")
    holder.stdin.flush()
    assert holder.stdout.readline() == "released\n"


def _script(apt_root: Path, timeout: int) -> subprocess.Popen[str]:
    env = dict(os.environ, APT_CONFIG=str(apt_root / "apt.conf"))
    env["KIKI_APT_LOCK_TIMEOUT"] = str(timeout)
    return subprocess.Popen(
        [str(REPO / "scripts/install-test-deps"), "--only", PACKAGE],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            with open(task / "children") as f:
                children = [int(c) for c in f.read().split()]
            found += children
            todo += children
    return found


def _waiting_on(script: subprocess.Popen[str], lock: Path, timeout: float = 60) -> None:
    """Until the script's ``apt-get install`` sleeps between tries of ``lock``, which we hold.

    apt opens the lock file, fails to lock it, closes it and sleeps a second, over and over:
    asleep, with the lock still ours, it is waiting for it.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert script.poll() is None, script.communicate()
        for pid in _descendants(script.pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                asleep = Path(f"/proc/{pid}/wchan").read_text() == "hrtimer_nanosleep"
            except (FileNotFoundError, ProcessLookupError):
                continue  # it exited meanwhile
            if argv[0].endswith(b"apt-get") and b"install" in argv and asleep:
                return
        time.sleep(0.05)
    raise AssertionError(f"no apt-get install waited for {lock} within {timeout}s")


def test_waits_for_the_lists_lock_then_the_dpkg_lock_then_installs(
    apt_root: Path, holder: subprocess.Popen[str]
) -> None:
    lists_lock = apt_root / "var/lib/apt/lists/lock"
    frontend_lock = apt_root / "var/lib/dpkg/lock-frontend"
    script = _script(apt_root, timeout=120)
    try:
        assert script.stderr is not None
        assert script.stderr.readline() == f"installing test packages: {PACKAGE}\n"
        # Waiting for `apt-get update`'s lock: the script says so and keeps trying.
        assert "waiting up to 120s for another apt" in script.stderr.readline()
        _release(holder, lists_lock)
        # Then for the dpkg frontend lock, which `apt-get install` waits on by itself.
        _waiting_on(script, frontend_lock)
        _release(holder, frontend_lock)
        _release(holder, apt_root / "var/lib/dpkg/lock")
        _out, err = script.communicate(timeout=120)
    finally:
        if script.poll() is None:
            script.kill()
            script.wait(timeout=10)
    assert script.returncode == 0, err
    status = (apt_root / "var/lib/dpkg/status").read_text()
    assert f"Package: {PACKAGE}\nStatus: install ok installed\n" in status


def test_gives_up_after_its_timeout_with_apts_reason(
    apt_root: Path, holder: subprocess.Popen[str]
) -> None:
    script = _script(apt_root, timeout=2)
    try:
        _, err = script.communicate(timeout=60)
    finally:
        if script.poll() is None:
            script.kill()
            script.wait(timeout=10)
    assert script.returncode != 0
    assert "waiting up to 2s" in err
    assert f"Could not get lock {apt_root}/var/lib/apt/lists/lock" in err
    assert PACKAGE not in (apt_root / "var/lib/dpkg/status").read_text()
