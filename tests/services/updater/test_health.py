"""The health gate: a new commit whose declared check fails (or overruns its deadline) is
replaced by the previous one at once, and the failure is reported; a passing one stays."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiki_updater.app_users import BASE, AppUsers
from kiki_updater.health import HealthGate, HealthSpec
from kiki_updater.operations import HealthFailed, Operations
from kiki_updater.publish import publish
from kiki_updater.pull import Remote
from kiki_updater.signing import generate_keypair, sign_commit
from kiki_updater.store import Store
from kikitest.ostree_fixtures import in_worker, make_app_tree, traversable_dir, write_manifest
from libkiki.errors import Unavailable, ValidationError

pytestmark = pytest.mark.integration

APP = "org.example.player"
SECRET, PUBLIC = generate_keypair()
CHECK = """#!/bin/sh
# exits with the status written in the release, and proves it ran in the new deployment
echo "$PWD" > "$KIKI_APP_DATA/checked-in"
id -u > "$KIKI_APP_DATA/uid"
{body}
"""


def release(repo: Path, tree: Path, version: str, check: str, deadline: float = 5) -> str:
    script = tree / "bin" / "health"
    script.write_text(CHECK.format(body=check))
    script.chmod(0o755)
    write_manifest(
        tree, APP, version, health={"command": ["bin/health"], "deadlineSeconds": deadline}
    )
    return publish(tree, repo, sign=lambda r, c: sign_commit(r, c, SECRET)).commit


@pytest.fixture
def device() -> Iterator[Path]:
    with traversable_dir() as root:
        yield root / "device"


@pytest.fixture
def setup(tmp_path: Path, device: Path) -> tuple[Operations, Remote, Path, Path]:
    repo = tmp_path / "published"
    tree = make_app_tree(tmp_path / "tree", APP, "1.0")
    release(repo, tree, "1.0", "exit 0")
    # a child of the updater's wherever the tests run (a transient unit: tests/units/)
    updater = Operations(Store(device), health=HealthGate(runner="process"))
    remote = Remote.of("local", str(repo), ed25519_keys=(PUBLIC,))
    first = in_worker(updater.install, "app", APP, remote)
    assert first.version == "1.0"
    return updater, remote, repo, tree


@pytest.mark.parametrize(
    ("check", "deadline", "said"),
    [("echo broken >&2; exit 3", 5, "exited 3: broken"), ("sleep 30", 0.5, "did not end")],
    ids=["fails", "overruns"],
)
def test_a_failing_health_check_puts_the_previous_commit_back(
    setup: tuple[Operations, Remote, Path, Path], check: str, deadline: float, said: str
) -> None:
    updater, remote, repo, tree = setup
    before = updater.store.deployed("app", APP)
    assert before is not None
    bad = release(repo, tree, "1.1", check, deadline)
    with pytest.raises(HealthFailed, match=said) as failed:
        in_worker(updater.install, "app", APP, remote, update=True)
    ran = {"ran": "process", **({"uid": _app_uid(updater)} if os.geteuid() == 0 else {})}
    assert failed.value.data == {"error": "HealthFailed", "commit": bad, "health": ran}
    assert "(in a child process)" in str(failed.value)
    after = updater.store.deployed("app", APP)
    assert after is not None
    assert (after.commit, after.version) == (before.commit, "1.0")
    assert after.previous == before.previous  # the failed commit is no rollback target
    assert updater.store.resolve(after.ref) == before.commit
    assert [h["action"] for h in after.history][:2] == ["health-rollback", "update"]
    checked = (updater.store.home("app", APP) / "data" / "checked-in").read_text().strip()
    assert checked.endswith(f"deploy/{bad}")
    uid = int((updater.store.home("app", APP) / "data" / "uid").read_text())
    if os.geteuid() == 0:  # an updater running as root runs the check as the app's own uid
        assert uid == AppUsers(updater.store.root).uid("app", APP) != 0
    else:
        assert uid == os.geteuid()


def test_a_passing_health_check_keeps_the_new_commit(
    setup: tuple[Operations, Remote, Path, Path],
) -> None:
    updater, remote, repo, tree = setup
    good = release(repo, tree, "1.1", "exit 0")
    phases: list[tuple[str, dict[str, Any]]] = []
    done = in_worker(
        updater.install, "app", APP, remote, update=True, phase=lambda *p: phases.append(p)
    )
    assert done.commit == good
    # how it ran goes with the operation's end
    ran = {"ran": "process", **({"uid": _app_uid(updater)} if os.geteuid() == 0 else {})}
    assert phases[-1] == ("done", {"commit": good, "health": ran})


def _app_uid(updater: Operations) -> int:
    return AppUsers(updater.store.root).uid("app", APP)


@pytest.mark.skipif(os.path.isdir("/run/systemd/system"), reason="a system manager is here")
def test_a_check_that_must_run_in_a_unit_fails_where_there_is_no_system_manager(
    setup: tuple[Operations, Remote, Path, Path],
) -> None:
    updater, remote, repo, tree = setup
    updater.health = HealthGate(runner="unit")
    release(repo, tree, "1.1", "exit 0")
    why = "there is no system manager" if os.geteuid() == 0 else "the updater is not root"
    with pytest.raises(HealthFailed, match=why):
        in_worker(updater.install, "app", APP, remote, update=True)
    found = updater.store.deployed("app", APP)
    assert found is not None
    assert found.version == "1.0"


@pytest.mark.skipif(os.geteuid() != 0, reason="an app's uid is dropped to by root")
@pytest.mark.parametrize(
    ("cgroup", "refused"),
    [("0::/system.slice/kiki-updater.service\n", True), ("0::/system.slice/x.service\n", False)],
)
def test_a_child_check_in_a_kiki_units_cgroup_is_refused(
    setup: tuple[Operations, Remote, Path, Path], tmp_path: Path, cgroup: str, refused: bool
) -> None:
    # in the updater's cgroup the child would be identified as kiki-updater, a Kiki service,
    # whatever its uid (libkiki.peer)
    updater, remote, repo, tree = setup
    own = tmp_path / "cgroup"
    own.write_text(cgroup)
    updater.health = HealthGate(runner="process", own_cgroup=own)
    before = updater.store.deployed("app", APP)
    assert before is not None
    commit = release(repo, tree, "1.2", "exit 0")
    if not refused:
        assert in_worker(updater.install, "app", APP, remote, update=True).version == "1.2"
        return
    # no verdict on the app (it never ran): Unavailable, and the swap undone all the same
    with pytest.raises(Unavailable, match='set health_runner to "auto" or "unit"') as raised:
        in_worker(updater.install, "app", APP, remote, update=True)
    assert not isinstance(raised.value, HealthFailed)
    found = updater.store.deployed("app", APP)
    assert found is not None
    assert found.commit == before.commit
    checked = (updater.store.home("app", APP) / "data" / "checked-in").read_text().strip()
    assert not checked.endswith(commit)  # never run


def test_a_first_install_that_fails_its_check_is_removed_but_its_data_kept(
    tmp_path: Path, device: Path
) -> None:
    repo = tmp_path / "published"
    release(repo, make_app_tree(tmp_path / "tree", APP, "1.0"), "1.0", "exit 1")
    updater = Operations(Store(device), health=HealthGate())
    with pytest.raises(HealthFailed, match="was removed"):
        in_worker(updater.install, "app", APP, Remote.of("l", str(repo), ed25519_keys=(PUBLIC,)))
    assert updater.store.deployed("app", APP) is None
    assert (updater.store.home("app", APP) / "data" / "checked-in").is_file()


@pytest.mark.parametrize(
    "health",
    [
        "ping",
        {"deadlineSeconds": 5},
        {"tool": "a.b.c", "command": ["x"]},
        {"command": []},
        {"command": ["x"], "deadlineSeconds": 0},
        {"command": ["x"], "deadlineSeconds": 10_000},
        {"tool": "a.b.c", "arguments": []},
    ],
)
def test_malformed_health_declarations_are_refused(health: Any) -> None:
    with pytest.raises(ValidationError):
        HealthSpec.of({"health": health})


def test_a_declaration_is_read_with_its_deadline() -> None:
    spec = HealthSpec.of({"health": {"tool": "org.example.player.ping"}})
    assert spec == HealthSpec(30.0, tool="org.example.player.ping")
    assert HealthSpec.of({}) is None


def test_app_uids_are_one_per_app_and_kept(tmp_path: Path) -> None:
    users = AppUsers(tmp_path)
    first, second = users.uid("app", APP), users.uid("agent", APP)
    assert (first, second) == (BASE, BASE + 1)
    assert AppUsers(tmp_path).uid("app", APP) == first  # read back, not allocated again
