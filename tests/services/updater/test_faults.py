"""Faults, with real processes: the updater SIGKILLed at every phase of an update (and of a
rollback), then the journal's recovery; a full disk during a pull; a corrupted object.

Afterwards the app is on the old or the new commit, whole (compared file by file with a fresh
checkout), its ref agrees, the journal is empty, and the next update goes through."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiki_updater.health import HealthGate
from kiki_updater.journal import Journal, recover
from kiki_updater.operations import Operations
from kiki_updater.pull import PullFailed, Remote
from kiki_updater.signing import generate_keypair
from kiki_updater.store import CorruptObject, Store
from kikitest import until
from kikitest.ostree_fixtures import Served, assert_whole, in_worker, publish_versions, serve_dir
from libkiki.errors import PeerGone
from libkiki.paths import UPDATER_SOCKET
from libkiki.rpc import connect_unix

pytestmark = pytest.mark.integration

APP = "org.example.player"
SECRET, PUBLIC = generate_keypair()

# The updater's own code in a process of its own, killed (SIGKILL, by itself) as it enters
# ``die_at``: the journal is on disk by then, the phase's work not begun.
CHILD = """
import os, signal, sys
from pathlib import Path
from kiki_updater.gio import own_context
from kiki_updater.health import HealthGate
from kiki_updater.journal import Journal
from kiki_updater.operations import Operations
from kiki_updater.pull import Remote
from kiki_updater.store import Store

root, url, key, app, action, die_at = sys.argv[1:7]
ops = Operations(Store(Path(root)), health=HealthGate(), journal=Journal(Path(root)))

def phase(name, info):
    if name == die_at:
        os.kill(os.getpid(), signal.SIGKILL)

with own_context():
    if action == "rollback":
        ops.rollback("app", app, phase=phase)
    else:
        ops.install("app", app, Remote.of("origin", url, ed25519_keys=(key,)), update=True,
                    phase=phase)
"""


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, str, Served]]:
    repo = tmp_path / "published"
    publish_versions(repo, tmp_path, APP, ["1.0"], secret=SECRET, files=200)
    with serve_dir(repo) as (url, served):
        yield repo, url, served


def device(root: Path) -> Operations:
    return Operations(Store(root), health=HealthGate(), journal=Journal(root))


def child(root: Path, url: str, action: str, die_at: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-c", CHILD, str(root), url, PUBLIC, APP, action, die_at]
    return subprocess.Popen(argv, stderr=subprocess.PIPE)


def after_the_crash(root: Path, tmp: Path) -> tuple[Operations, str]:
    """Recover as a restarted updater would; the commit the app is on, checked whole."""
    updater = device(root)
    journal = Journal(root)
    said = in_worker(recover, updater.store, journal)
    assert len(said) == 1, said
    assert journal.pending() == []
    found = updater.store.deployed("app", APP)
    assert found is not None
    assert updater.store.resolve(found.ref) == found.commit
    assert_whole(updater.store, "app", APP, found.commit, tmp / "scratch")
    return updater, found.commit


@pytest.mark.parametrize(
    ("die_at", "ends_on"),
    [
        ("pull-commit", "old"),
        ("verify", "old"),
        ("pull", "old"),
        ("checkout", "old"),
        ("swap", "old"),
        ("health", "old"),  # swapped but not yet found healthy: undone
    ],
)
def test_killed_at_every_phase_of_an_update(
    site: tuple[Path, str, Served], tmp_path: Path, die_at: str, ends_on: str
) -> None:
    repo, url, _ = site
    root = tmp_path / "device"
    remote = Remote.of("origin", url, ed25519_keys=(PUBLIC,))
    old = in_worker(device(root).install, "app", APP, remote).commit
    (new_release,) = publish_versions(
        repo, tmp_path / "next", APP, ["1.1"], secret=SECRET, files=200
    )
    proc = child(root, url, "update", die_at)
    assert proc.wait(timeout=60) == -signal.SIGKILL, proc.stderr and proc.stderr.read()
    updater, commit = after_the_crash(root, tmp_path)
    assert commit == (old if ends_on == "old" else new_release.commit)
    # The restarted updater finishes the job: the update goes through now.
    assert in_worker(updater.install, "app", APP, remote, update=True).commit == new_release.commit
    assert_whole(updater.store, "app", APP, new_release.commit, tmp_path / "scratch")


def test_killed_in_the_middle_of_a_pull(site: tuple[Path, str, Served], tmp_path: Path) -> None:
    repo, url, served = site
    root = tmp_path / "device"
    remote = Remote.of("origin", url, ed25519_keys=(PUBLIC,))
    old = in_worker(device(root).install, "app", APP, remote).commit
    big = publish_versions(
        repo, tmp_path / "next", APP, ["2.0"], secret=SECRET, files=200, salt="all new"
    )[0]
    served.reset()
    served.rate = 100_000
    proc = child(root, url, "update", "never")
    deadline = time.monotonic() + 30
    while served.bytes < 20_000 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert served.bytes >= 20_000  # killed while the content was coming
    served.rate = 0
    updater, commit = after_the_crash(root, tmp_path)
    assert commit == old
    assert in_worker(updater.install, "app", APP, remote, update=True).commit == big.commit


def test_a_rollback_killed_at_its_swap_is_finished(
    site: tuple[Path, str, Served], tmp_path: Path
) -> None:
    repo, url, _ = site
    root = tmp_path / "device"
    remote = Remote.of("origin", url, ed25519_keys=(PUBLIC,))
    old = in_worker(device(root).install, "app", APP, remote).commit
    publish_versions(repo, tmp_path / "next", APP, ["1.1"], secret=SECRET, files=200)
    in_worker(device(root).install, "app", APP, remote, update=True)
    proc = child(root, url, "rollback", "swap")
    assert proc.wait(timeout=60) == -signal.SIGKILL
    _, commit = after_the_crash(root, tmp_path)
    assert commit == old


def test_a_full_disk_during_a_pull_leaves_the_old_version_whole(
    site: tuple[Path, str, Served], tmp_path: Path
) -> None:
    repo, url, _ = site
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "kiki-test", str(small)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        remote = Remote.of("origin", url, ed25519_keys=(PUBLIC,))
        updater = device(small / "ostree")
        old = in_worker(updater.install, "app", APP, remote).commit
        big = {"blob": os.urandom(12 << 20)}  # twice the filesystem
        publish_versions(repo, tmp_path / "big", APP, ["9.0"], secret=SECRET, extra=big)
        with pytest.raises(PullFailed, match=r"(?i)space|quota|disk"):
            in_worker(updater.install, "app", APP, remote, update=True)
        assert Journal(small / "ostree").pending() == []
        found = updater.store.deployed("app", APP)
        assert found is not None
        assert found.commit == old
        assert updater.store.resolve(found.ref) == old
        assert_whole(updater.store, "app", APP, old, tmp_path / "scratch")
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_a_corrupted_object_is_found_refused_and_fetched_again(
    site: tuple[Path, str, Served], tmp_path: Path
) -> None:
    repo, url, _ = site
    root = tmp_path / "device"
    remote = Remote.of("origin", url, ed25519_keys=(PUBLIC,))
    updater = device(root)
    old = in_worker(updater.install, "app", APP, remote).commit
    # Flip a byte of an object the next release shares (every file but one is unchanged).
    shared = root / "app" / APP / "current" / "lib" / "m05" / "f00005.py"
    objects = {p.stat().st_ino: p for p in (root / "repo" / "objects").rglob("*.file")}
    victim = objects[shared.stat().st_ino]
    data = bytearray(victim.read_bytes())
    data[0] ^= 0xFF
    victim.chmod(0o644)
    victim.write_bytes(bytes(data))
    (new,) = publish_versions(repo, tmp_path / "next", APP, ["1.1"], secret=SECRET, files=200)
    with pytest.raises(CorruptObject):
        in_worker(updater.install, "app", APP, remote, update=True)
    found = updater.store.deployed("app", APP)
    assert found is not None
    assert found.commit == old
    assert updater.store.resolve(found.ref) == old
    # The bad object was dropped: the next pull fetches it again, and the update goes through.
    assert in_worker(updater.install, "app", APP, remote, update=True).commit == new.commit
    assert_whole(updater.store, "app", APP, new.commit, tmp_path / "scratch")


def test_the_service_killed_mid_update_recovers_at_its_next_start(
    site: tuple[Path, str, Served], tmp_path: Path, sockdir: Path, spawn_service: Any
) -> None:
    repo, url, served = site
    (sockdir / "etc").mkdir()
    (sockdir / "etc" / "updater.toml").write_text(
        f'broker_tools = false\nroot = "{tmp_path / "device"}"\n[remotes.origin]\n'
        f'url = "{url}"\ned25519_keys = ["{PUBLIC}"]\n'
    )
    proc, notes = spawn_service("updater")
    notes.wait_for("READY")
    sock = sockdir / UPDATER_SOCKET

    async def call(method: str, params: dict[str, Any]) -> Any:
        async with connect_unix(sock) as conn:
            return await conn.request("dev.kiki.update." + method, params)

    old = asyncio.run(call("install", {"appId": APP, "remote": "origin"}))["operation"]["commit"]
    publish_versions(
        repo, tmp_path / "next", APP, ["2.0"], secret=SECRET, files=200, salt="all new"
    )
    served.reset()
    served.rate = 50_000

    async def kill_mid_pull() -> None:
        update = asyncio.create_task(call("update", {"appId": APP}))
        await until(lambda: served.bytes > 20_000, "the update's pull under way")
        proc.send_signal(signal.SIGKILL)
        with pytest.raises(PeerGone):
            await update

    asyncio.run(kill_mid_pull())
    proc.wait(timeout=30)
    served.rate = 0
    assert (tmp_path / "device" / "journal" / f"app-{APP}.json").exists()
    _, notes = spawn_service("updater")
    assert "recovered 1 interrupted operation(s)" in notes.wait_for("READY")["STATUS"]
    listed = asyncio.run(call("list", {}))
    assert [(a["appId"], a["commit"]) for a in listed["apps"]] == [(APP, old)]
    assert not (tmp_path / "device" / "journal" / f"app-{APP}.json").exists()
