"""What an update makes durable and how: its pull without libostree's sync of the whole
filesystem, then the objects it added synced one by one; a first install keeps libostree's
sync; the scratch repository is never synced; the repository's own setting is put back."""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from kiki_updater.operations import Operations
from kiki_updater.publish import publish
from kiki_updater.pull import Remote, ensure_remote, pull
from kiki_updater.signing import generate_keypair, sign_commit
from kiki_updater.store import Store
from kikitest.ostree_fixtures import in_worker, make_app_tree, publish_versions, write_manifest
from libkiki.errors import NotFound

pytestmark = pytest.mark.unit

APP = "org.example.player"
SECRET, PUBLIC = generate_keypair()


def test_an_update_syncs_what_it_added_and_an_install_the_whole_filesystem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    published = tmp_path / "published"
    remote = Remote.of("origin", str(published), ed25519_keys=(PUBLIC,))
    ops = Operations(Store(tmp_path / "device"))
    synced: list[tuple[str, str, int]] = []
    sync_pulled = Store.sync_pulled

    def spy(self: Store, commit: str, since: str, remote_ref: Any = None) -> int:
        count = sync_pulled(self, commit, since, remote_ref)
        synced.append((commit, since, count))
        return count

    monkeypatch.setattr(Store, "sync_pulled", spy)
    (first,) = publish_versions(published, tmp_path / "a", APP, ["1.0"], secret=SECRET)
    in_worker(ops.install, "app", APP, remote)
    assert synced == []  # a first install: libostree's sync
    (second,) = publish_versions(published, tmp_path / "b", APP, ["1.1"], secret=SECRET)
    in_worker(ops.install, "app", APP, remote, update=True)
    # one changed file, the directory trees above it, the commit and its signatures
    assert [(c, s) for c, s, _ in synced] == [(second.commit, first.commit)]
    assert 3 <= synced[0][2] <= 8

    def settings() -> tuple[bool, bool]:
        return ops.store.repo.get_disable_fsync(), ops.store.scratch.get_disable_fsync()

    assert in_worker(settings) == (False, True)


def test_a_pull_without_sync_puts_the_repositorys_setting_back_when_it_fails(
    tmp_path: Path,
) -> None:
    published = tmp_path / "published"
    publish_versions(published, tmp_path / "a", APP, ["1.0"], secret=SECRET)
    remote = Remote.of("origin", str(published), ed25519_keys=(PUBLIC,))
    store = Store(tmp_path / "device")

    def attempt() -> Any:
        ensure_remote(store.repo, remote)
        with pytest.raises(NotFound):
            pull(store.repo, remote, "app/org.example.none/x86_64/stable", sync=False)
        return store.repo.get_disable_fsync()

    assert in_worker(attempt) is False


def test_a_remote_configured_as_it_is_already_is_not_written_again(tmp_path: Path) -> None:
    """Every update names its remote: the repository's config is rewritten (two fdatasyncs)
    only when the remote's URL or options differ from what it holds."""
    store = Store(tmp_path / "device")
    config = store.repo_path / "config"

    def written(remote: Remote) -> bool:
        def run() -> bool:
            before = (config.read_bytes(), config.stat()) if config.exists() else None
            ensure_remote(store.repo, remote)
            after = (config.read_bytes(), config.stat())
            if before is not None and before[0] == after[0]:
                # the same content: it must not have been written at all
                assert (before[1].st_ino, before[1].st_ctime_ns) == (
                    after[1].st_ino,
                    after[1].st_ctime_ns,
                )
                return False
            return True

        return in_worker(run)

    origin = Remote.of("origin", "http://127.0.0.1:9/repo", extra={"tls-permissive": "true"})
    assert written(origin)
    assert not written(origin)
    assert written(Remote.of("origin", "http://127.0.0.1:9/other", extra=origin.extra))
    assert written(Remote.of("origin", "http://127.0.0.1:9/other"))  # an option dropped
    assert not written(Remote.of("origin", "http://127.0.0.1:9/other"))
    assert written(Remote.of("mirror", "http://127.0.0.1:9/other"))


@pytest.mark.parametrize("target", ["run", "/nonexistent/kiki-target", "fifo"])
def test_an_update_that_adds_a_symlink_is_synced_and_deployed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    """A symlink object is a real symlink in ``bare-user-only``: its target is the publisher's
    (relative, absent, a FIFO) and is never opened; the link is made durable by its
    directory's fsync, the update deploys at its first attempt."""
    published = tmp_path / "published"
    remote = Remote.of("origin", str(published), ed25519_keys=(PUBLIC,))
    ops = Operations(Store(tmp_path / "device"))
    synced: list[int] = []
    sync_pulled = Store.sync_pulled

    def spy(self: Store, commit: str, since: str, remote_ref: Any = None) -> int:
        synced.append(sync_pulled(self, commit, since, remote_ref))
        return synced[-1]

    monkeypatch.setattr(Store, "sync_pulled", spy)
    tree = make_app_tree(tmp_path / "tree", APP, "1.0")

    def release(version: str) -> str:
        write_manifest(tree, APP, version)
        return publish(tree, published, sign=lambda r, c: sign_commit(r, c, SECRET)).commit

    release("1.0")
    in_worker(ops.install, "app", APP, remote)
    waiting = False
    if target == "fifo":
        target = str(tmp_path / "fifo")
        os.mkfifo(target)
    os.symlink(target, tree / "bin" / "alias")
    second = release("1.1")
    with ThreadPoolExecutor(1) as pool:
        update = pool.submit(in_worker, ops.install, "app", APP, remote, update=True)
        if target.endswith("fifo"):
            # Were the FIFO opened, the update would wait in that open: a writer opened
            # after a minute lets it go on (ENXIO: nobody is waiting), and the test fails
            # instead of hanging.
            with contextlib.suppress(TimeoutError):
                update.exception(timeout=60)
            with contextlib.suppress(OSError):
                os.close(os.open(target, os.O_WRONLY | os.O_NONBLOCK))
                waiting = True
        deployed = update.result()
    assert not waiting
    assert (deployed.commit, deployed.version) == (second, "1.1")
    assert ops.store.current("app", APP) == second
    assert os.readlink(deployed.path / "bin" / "alias") == target
    (count,) = synced
    assert count > 0  # synced object by object, not the whole filesystem


def test_sync_pulled_makes_the_remote_ref_and_state_durable_after_the_objects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What libostree wrote last in an unsynced pull (the remote-tracking ref, the removal of
    the ``.commitpartial`` marker in ``state``) is synced after the objects and their
    directories."""
    published = tmp_path / "published"
    remote = Remote.of("origin", str(published), ed25519_keys=(PUBLIC,))
    store = Store(tmp_path / "device")
    ops = Operations(store)
    publish_versions(published, tmp_path / "a", APP, ["1.0"], secret=SECRET)
    in_worker(ops.install, "app", APP, remote)
    publish_versions(published, tmp_path / "b", APP, ["1.1"], secret=SECRET)
    opened: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        opened.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    in_worker(ops.install, "app", APP, remote, update=True)
    repo = str(store.repo_path)
    ref = store.deployed("app", APP)
    assert ref is not None
    tracking = f"{repo}/refs/remotes/origin/{ref.ref}"
    objects = [i for i, path in enumerate(opened) if path.startswith(f"{repo}/objects")]
    assert objects
    assert opened.index(f"{repo}/state") > max(objects)
    assert opened.index(tracking) > max(objects)
    assert opened.index(os.path.dirname(tracking)) > opened.index(tracking)
