"""The store: hardlinked deployments, the ``current`` swap, rollback by ref, prune, remove."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from kiki_updater.gio import commit_dir
from kiki_updater.store import CrossDevice, NoRollback, Store, app_ref
from kikitest.ostree_fixtures import make_app_tree
from libkiki.errors import InvalidParams, NotFound

pytestmark = pytest.mark.unit

APP = "org.example.player"


def commit_version(store: Store, tmp: Path, version: str, salt: str = "") -> str:
    tree = make_app_tree(tmp / f"src-{version}", APP, version, salt=salt or version)
    return commit_dir(
        store.repo, tree, "test/source", subject=version, metadata={"version": version}
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "ostree")


def test_a_deployment_is_a_hardlinked_checkout_behind_the_current_symlink(
    store: Store, tmp_path: Path
) -> None:
    commit = commit_version(store, tmp_path, "1.0")
    found = store.deploy("app", APP, app_ref("app", APP), commit, remote=None, action="install")
    home = store.root / "app" / APP
    assert os.readlink(home / "current") == f"deploy/{commit}"
    assert found.version == "1.0"
    assert found.previous is None
    # The deployment's files are the repository's objects, not copies.
    assert (home / "current" / "lib" / "m00" / "f00000.py").stat().st_nlink >= 2
    assert (home / "data").is_dir()
    assert not (found.path / "data").exists()
    assert store.resolve(app_ref("app", APP)) == commit


def test_an_update_keeps_the_previous_commit_and_rollback_swaps_back(
    store: Store, tmp_path: Path
) -> None:
    ref = app_ref("app", APP)
    one = commit_version(store, tmp_path, "1.0")
    two = commit_version(store, tmp_path, "2.0")
    store.deploy("app", APP, ref, one, remote=None, action="install")
    (store.root / "app" / APP / "data" / "state").write_text("kept")
    store.deploy("app", APP, ref, two, remote=None, action="update")
    assert store.previous("app", APP) == one
    back = store.rollback("app", APP)
    assert (back.commit, back.previous, back.version) == (one, two, "1.0")
    assert store.resolve(ref) == one
    assert (store.root / "app" / APP / "current" / "kiki-app.json").read_bytes().find(b"1.0") > 0
    assert (store.root / "app" / APP / "data" / "state").read_text() == "kept"
    # A second rollback undoes the first.
    assert store.rollback("app", APP).commit == two
    assert [h["action"] for h in store.deployed("app", APP).history] == [  # type: ignore[union-attr]
        "rollback",
        "rollback",
        "update",
        "install",
    ]


def test_a_rollback_answers_what_is_deployed_after_it(store: Store, tmp_path: Path) -> None:
    """What a rollback returns is built from what it read before and wrote, not read again:
    it must be exactly what the store says afterwards."""
    ref = app_ref("app", APP)
    store.deploy("app", APP, ref, commit_version(store, tmp_path, "1.0"), remote="o", action="a")
    store.deploy("app", APP, ref, commit_version(store, tmp_path, "2.0"), remote="o", action="b")
    for _ in range(3):
        before = store.deployed("app", APP)
        back = store.rollback("app", APP, found=before)
        assert back == store.deployed("app", APP)
        assert before is not None
        assert back.previous == before.commit


def test_rollback_needs_a_previous_deployment(store: Store, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        store.rollback("app", APP)
    store.deploy(
        "app",
        APP,
        app_ref("app", APP),
        commit_version(store, tmp_path, "1.0"),
        remote=None,
        action="install",
    )
    with pytest.raises(NoRollback):
        store.rollback("app", APP)


def test_prune_keeps_the_rollback_target_alive(store: Store, tmp_path: Path) -> None:
    ref = app_ref("app", APP)
    one = commit_version(store, tmp_path, "1.0")
    two = commit_version(store, tmp_path, "2.0")
    store.deploy("app", APP, ref, one, remote=None, action="install")
    store.deploy("app", APP, ref, two, remote=None, action="update")
    store.repo.set_ref_immediate(None, "test/source", None, None)
    # Lose the checkout too: the rollback must find every object of the target in the repo.
    shutil.rmtree(store.root / "app" / APP / "deploy" / one)
    store.prune()
    assert store.rollback("app", APP).commit == one
    assert (store.root / "app" / APP / "current" / "bin" / "run").is_file()


def test_only_the_current_and_previous_deployments_are_kept(store: Store, tmp_path: Path) -> None:
    ref = app_ref("app", APP)
    commits = [commit_version(store, tmp_path, v) for v in ("1.0", "2.0", "3.0")]
    for commit in commits:
        store.deploy("app", APP, ref, commit, remote=None, action="update")
    assert sorted(p.name for p in (store.root / "app" / APP / "deploy").iterdir()) == sorted(
        commits[1:]
    )


def test_a_checkout_that_would_copy_is_refused(store: Store, tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is on the same filesystem as the test's directory")
    commit = commit_version(store, tmp_path, "1.0")
    other = shm / f"kiki-test-{os.getpid()}"
    other.mkdir()
    try:
        (store.root / "app" / APP).mkdir(parents=True)
        (store.root / "app" / APP / "deploy").symlink_to(other)
        with pytest.raises(CrossDevice):
            store.deploy("app", APP, app_ref("app", APP), commit, remote=None, action="install")
        assert list(other.iterdir()) == []
        assert store.current("app", APP) is None
    finally:
        shutil.rmtree(other)


def test_a_checkout_left_half_done_is_redone(store: Store, tmp_path: Path) -> None:
    commit = commit_version(store, tmp_path, "1.0")
    partial = store.root / "app" / APP / "deploy" / f".partial-{commit}"
    partial.mkdir(parents=True)
    (partial / "junk").write_text("from a killed run")
    found = store.deploy("app", APP, app_ref("app", APP), commit, remote=None, action="install")
    assert not partial.exists()
    assert not (found.path / "junk").exists()


def test_remove_drops_refs_and_deployments_and_prune_frees_the_objects(
    store: Store, tmp_path: Path
) -> None:
    ref = app_ref("app", APP)
    commit = commit_version(store, tmp_path, "1.0")
    store.deploy("app", APP, ref, commit, remote=None, action="install")
    store.repo.set_ref_immediate(None, "test/source", None, None)
    store.remove("app", APP)
    assert not (store.root / "app" / APP).exists()
    assert store.resolve(ref) is None
    objects, _ = store.prune()
    assert objects > 20
    with pytest.raises(NotFound):
        store.remove("app", APP)


def test_ids_that_are_not_reverse_dns_names_are_refused(store: Store) -> None:
    for bad in ("../etc", "a", "org.example/../x", ".hidden.x"):
        with pytest.raises(InvalidParams):
            store.home("app", bad)
