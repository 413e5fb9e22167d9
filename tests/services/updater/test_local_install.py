"""A directory install (``install {appId, directory}``): the updater, which runs as root, takes
the descriptor its caller opened, only of a directory the caller owns, and reads the tree
through it alone: never through a symlink, never from a FIFO or a device, bounded."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiki_updater import local
from kiki_updater.local import LocalBuilds, stage
from kiki_updater.signing import public_of
from kikitest.ostree_fixtures import make_app_tree
from libkiki.errors import InvalidParams, LimitExceeded

pytestmark = pytest.mark.unit


@pytest.fixture
def opened() -> Iterator[list[int]]:
    fds: list[int] = []
    yield fds
    for fd in fds:
        os.close(fd)


def _open(path: Path, fds: list[int]) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fds.append(fd)
    return fd


def test_symlinks_are_copied_as_symlinks_never_followed(tmp_path: Path, opened: list[int]) -> None:
    secret = tmp_path / "root-only"
    secret.write_text("ROOT-ONLY-SECRET")
    secret.chmod(0o600)
    app = make_app_tree(tmp_path / "app", "org.example.demo", "1.0", files=2)
    (app / "link").symlink_to(secret)
    (app / "tools").mkdir()
    (app / "tools" / "run").write_text("#!/bin/sh\n")
    (app / "tools" / "run").chmod(0o700)
    into = tmp_path / "staged"
    into.mkdir()
    stage(_open(app, opened), into)
    assert os.readlink(into / "link") == str(secret)
    assert (into / "tools" / "run").stat().st_mode & 0o777 == 0o755
    assert (into / "kiki-app.json").read_bytes() == (app / "kiki-app.json").read_bytes()


def test_a_symlinked_manifest_is_refused(tmp_path: Path, opened: list[int]) -> None:
    secret = tmp_path / "root-only.json"
    secret.write_text('{"id": "org.example.demo", "version": "ROOT-ONLY-SECRET"}')
    app = tmp_path / "app"
    app.mkdir()
    (app / "kiki-app.json").symlink_to(secret)
    into = tmp_path / "staged"
    into.mkdir()
    with pytest.raises(InvalidParams, match="must be a regular file"):
        stage(_open(app, opened), into)
    assert list(into.iterdir()) == []


def test_a_fifo_is_refused_without_blocking(tmp_path: Path, opened: list[int]) -> None:
    app = make_app_tree(tmp_path / "app", "org.example.demo", "1.0", files=2)
    os.mkfifo(app / "pipe")
    into = tmp_path / "staged"
    into.mkdir()
    failed: list[BaseException] = []

    def go() -> None:
        try:
            stage(_open(app, opened), into)
        except InvalidParams as exc:
            failed.append(exc)

    reader = threading.Thread(target=go, daemon=True)
    reader.start()
    reader.join(30)
    assert not reader.is_alive(), "reading the tree blocked on a FIFO"
    assert failed
    assert "pipe" in str(failed[0])


def test_the_tree_is_bounded(
    tmp_path: Path, opened: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app_tree(tmp_path / "app", "org.example.demo", "1.0", files=20, size=512)
    monkeypatch.setattr(local, "MAX_FILES", 10)
    (tmp_path / "a").mkdir()
    with pytest.raises(LimitExceeded, match="entries"):
        stage(_open(app, opened), tmp_path / "a")
    monkeypatch.setattr(local, "MAX_FILES", 10_000)
    monkeypatch.setattr(local, "MAX_BYTES", 4096)
    (tmp_path / "b").mkdir()
    with pytest.raises(LimitExceeded, match="MiB"):
        stage(_open(app, opened), tmp_path / "b")


def test_the_local_key_is_made_once_and_kept_private(tmp_path: Path) -> None:
    local_builds = LocalBuilds(tmp_path)
    first = local_builds.remote()
    assert (local_builds.key_path.stat().st_mode & 0o777) == 0o600
    assert LocalBuilds(tmp_path).remote().ed25519_keys == first.ed25519_keys
    assert first.ed25519_keys == (public_of(local_builds.key_path.read_text()),)
    assert first.url == local_builds.repo_path.as_uri()


def test_callers_racing_for_the_first_key_all_get_the_one_key(tmp_path: Path) -> None:
    publics: list[tuple[str, ...]] = []
    errors: list[BaseException] = []
    for round_ in range(20):
        root = tmp_path / str(round_)
        got: list[tuple[str, ...]] = []

        def first_use(root: Path = root, got: list[tuple[str, ...]] = got) -> None:
            try:
                got.append(LocalBuilds(root).remote().ed25519_keys)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=first_use) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(set(got)) == 1, f"round {round_}: {len(set(got))} keys"
        publics.extend(got)
    assert errors == []
