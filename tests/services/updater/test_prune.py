"""Updates free what no ref reaches: releases older than the previous one, and the commits
fetched alone to be checked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kiki_updater.gio import lib
from kiki_updater.operations import HealthFailed, Operations
from kiki_updater.pull import Remote
from kiki_updater.signing import generate_keypair
from kiki_updater.store import Store
from kikitest.ostree_fixtures import in_worker, publish_versions
from libkiki.errors import KikiError

pytestmark = pytest.mark.unit

APP = "org.example.player"
SECRET, PUBLIC = generate_keypair()


def _bytes(objects: Path) -> int:
    return sum(p.stat().st_size for p in objects.rglob("*") if p.is_file())


def test_five_updates_keep_two_releases(tmp_path: Path) -> None:
    published = tmp_path / "published"
    remote = Remote.of("local", str(published), ed25519_keys=(PUBLIC,))
    ops = Operations(Store(tmp_path / "device"))
    releases = []
    for i, version in enumerate(["1.0", "1.1", "1.2", "1.3", "1.4"]):
        blob = {"blob.bin": os.urandom(1 << 20)}  # a megabyte no other release shares
        (release,) = publish_versions(
            published, tmp_path / f"t{i}", APP, [version], secret=SECRET, extra=blob
        )
        releases.append(release)
        in_worker(ops.install, "app", APP, remote, update=i > 0)
    commit = lib().OSTree.ObjectType.COMMIT
    _, kept_old = ops.store.repo.has_object(commit, releases[2].commit, None)
    _, kept_previous = ops.store.repo.has_object(commit, releases[3].commit, None)
    assert not kept_old
    assert kept_previous  # the rollback target
    assert ops.store.prune() == (0, 0)
    assert _bytes(ops.store.repo_path / "objects") < 3 * (1 << 20)
    assert not list((tmp_path / "device" / "verify" / "objects").rglob("*.commit"))
    assert in_worker(ops.rollback, "app", APP).version == "1.3"


def test_an_update_prunes_only_when_it_let_a_release_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    published = tmp_path / "published"
    remote = Remote.of("local", str(published), ed25519_keys=(PUBLIC,))
    ops = Operations(Store(tmp_path / "device"))
    pruned: list[str] = []
    prune = Store.prune

    def spy(self: Store) -> tuple[int, int]:
        pruned.append(str(self.current("app", APP)))
        return prune(self)

    monkeypatch.setattr(Store, "prune", spy)
    for i, version in enumerate(["1.0", "1.1", "1.2"]):
        publish_versions(published, tmp_path / f"t{i}", APP, [version], secret=SECRET)
        in_worker(ops.install, "app", APP, remote, update=i > 0)
        # 1.1: the refs hold 1.1 and 1.0, nothing to free; 1.2 lets 1.0 go
        assert len(pruned) == (1 if version == "1.2" else 0)


def test_an_update_after_a_failed_health_check_frees_the_failed_release(tmp_path: Path) -> None:
    """A release whose health check failed is held by the remote-tracking ref alone; the next
    update moves that ref away from it: it prunes, though no ref of the app's let a release
    go."""
    published = tmp_path / "published"
    remote = Remote.of("local", str(published), ed25519_keys=(PUBLIC,))
    unhealthy: set[str] = set()

    def health(kind: str, ident: str, path: Path) -> None:
        if path.name in unhealthy:
            raise KikiError("unhealthy")

    ops = Operations(Store(tmp_path / "device"), health=health)
    for i, version in enumerate(["1.0", "1.1", "1.2"]):
        blob = {"blob.bin": os.urandom(1 << 20)}
        (release,) = publish_versions(
            published, tmp_path / f"t{i}", APP, [version], secret=SECRET, extra=blob
        )
        if version == "1.1":
            unhealthy.add(release.commit)
            failed = release.commit
            with pytest.raises(HealthFailed):
                in_worker(ops.install, "app", APP, remote, update=True)
        else:
            in_worker(ops.install, "app", APP, remote, update=i > 0)
    _, kept = ops.store.repo.has_object(lib().OSTree.ObjectType.COMMIT, failed, None)
    assert not kept
    assert ops.store.prune() == (0, 0)
