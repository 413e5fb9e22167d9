"""A commit's objects read as files (``objects.py``): the same objects libostree's traversal
finds, the same verdict as its ``fsck_object``, the objects an update adds, and the store's
checks and syncs built on them."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiki_updater import objects
from kiki_updater.gio import commit_dir, lib
from kiki_updater.objects import (
    Parsed,
    added,
    commit_root,
    file_matches,
    parse_dirtree,
    reached,
)
from kiki_updater.store import CorruptObject, Store
from kikitest.ostree_fixtures import make_app_tree

pytestmark = pytest.mark.unit

APP = "org.example.player"


def commit_tree(store: Store, tree: Path, version: str) -> str:
    return commit_dir(
        store.repo, tree, "test/source", subject=version, metadata={"version": version}
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "ostree")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """An app tree with what a checksum depends on: modes 0644 and 0755, a symlink, an empty
    directory, a directory of another mode, and enough files for two-byte framing offsets."""
    tree = make_app_tree(tmp_path / "src", APP, "1.0", files=300, size=700)
    os.symlink("run", tree / "bin" / "alias")
    (tree / "empty").mkdir()
    (tree / "lib" / "m03").chmod(0o700)
    return tree


def libostree_reached(store: Store, commit: str) -> dict[str, set[str]]:
    OSTree = lib().OSTree
    names = {
        OSTree.ObjectType.FILE: "files",
        OSTree.ObjectType.DIR_TREE: "dirtrees",
        OSTree.ObjectType.DIR_META: "dirmetas",
    }
    _, reachable = store.repo.traverse_commit(commit, 0, None)
    out: dict[str, set[str]] = {"files": set(), "dirtrees": set(), "dirmetas": set()}
    for key in reachable:
        checksum, kind = OSTree.object_name_deserialize(key)
        if kind in names:
            out[names[kind]].add(checksum)
    return out


def object_file(store: Store, checksum: str, kind: str = "file") -> Path:
    return objects.object_path(store.repo_path / "objects", checksum, kind)


def test_the_objects_reached_are_libostrees(store: Store, tree: Path) -> None:
    commit = commit_tree(store, tree, "1.0")
    found = reached(store.repo_path / "objects", *commit_root(store.repo, commit))
    want = libostree_reached(store, commit)
    assert found.files == want["files"]
    assert found.dirtrees == want["dirtrees"]
    assert found.dirmetas == want["dirmetas"]
    assert len(found.files) > 250


def test_a_dirtree_parses_to_its_names(store: Store, tree: Path) -> None:
    commit = commit_tree(store, tree, "1.0")
    root, _ = commit_root(store.repo, commit)
    files, dirs = parse_dirtree(object_file(store, root, "dirtree").read_bytes())
    assert [name for name, _ in files] == ["kiki-app.json"]
    assert [name for name, _, _ in dirs] == ["bin", "empty", "lib"]
    assert all(len(checksum) == 64 for _, checksum in files)


def test_parsed_trees_are_reused_and_bounded(
    store: Store, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = commit_tree(store, tree, "1.0")
    root = commit_root(store.repo, commit)
    objects_dir = store.repo_path / "objects"
    parsed = Parsed()
    found = reached(objects_dir, *root, parsed)
    assert all(t in parsed for t in found.dirtrees)
    assert reached(objects_dir, *root, parsed) == found  # from the parses kept
    monkeypatch.setattr(Parsed, "LIMIT", 2)
    small = Parsed()
    assert reached(objects_dir, *root, small) == found
    assert len(small) <= 2
    assert len(found.dirtrees) > 2


def test_every_regular_file_matches_its_checksum_and_a_symlink_is_left_to_libostree(
    store: Store, tree: Path
) -> None:
    commit = commit_tree(store, tree, "1.0")
    found = reached(store.repo_path / "objects", *commit_root(store.repo, commit))
    symlinks = {c for c in found.files if object_file(store, c).is_symlink()}
    assert len(symlinks) == 1
    for checksum in found.files - symlinks:
        assert file_matches(store.repo_path / "objects", checksum)
    (link,) = symlinks
    assert not file_matches(store.repo_path / "objects", link)
    # libostree finds it whole: the store's check passes
    assert store.fsck(commit) == len(found.files)


def test_a_file_flipped_by_one_byte_does_not_match_and_the_check_refuses_it(
    store: Store, tree: Path
) -> None:
    commit = commit_tree(store, tree, "1.0")
    victim_path = tree / "lib" / "m05" / "f00005.py"
    found = reached(store.repo_path / "objects", *commit_root(store.repo, commit))
    (victim,) = [
        c
        for c in found.files
        if not object_file(store, c).is_symlink()
        and object_file(store, c).read_bytes() == victim_path.read_bytes()
    ]
    path = object_file(store, victim)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    assert not file_matches(store.repo_path / "objects", victim)
    with pytest.raises(CorruptObject) as caught:
        store.fsck(commit)
    assert caught.value.data == {"error": "CorruptObject", "object": victim}
    assert not path.exists()  # deleted: the next pull fetches it again
    assert store.is_partial(commit)


def test_a_damaged_directory_tree_is_refused(store: Store, tree: Path) -> None:
    commit = commit_tree(store, tree, "1.0")
    found = reached(store.repo_path / "objects", *commit_root(store.repo, commit))
    root, _ = commit_root(store.repo, commit)
    (sub,) = [t for t in found.dirtrees if t != root][:1]
    path = object_file(store, sub, "dirtree")
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(objects.BadObject):
        reached(store.repo_path / "objects", *commit_root(store.repo, commit))
    with pytest.raises(CorruptObject):
        store.fsck(commit)
    assert store.is_partial(commit)


def test_added_is_what_the_new_commit_reaches_and_the_old_did_not(store: Store, tree: Path) -> None:
    old = commit_tree(store, tree, "1.0")
    (tree / "lib" / "m02" / "f00002.py").write_text("changed\n")
    (tree / "lib" / "new").mkdir()
    (tree / "lib" / "new" / "a.py").write_text("new\n")
    (tree / "empty").chmod(0o700)
    new = commit_tree(store, tree, "1.1")
    where = store.repo_path / "objects"
    before = reached(where, *commit_root(store.repo, old))
    after = reached(where, *commit_root(store.repo, new))
    delta = added(where, commit_root(store.repo, new), commit_root(store.repo, old))
    assert delta.files == after.files - before.files
    assert len(delta.files) == 2
    assert after.dirtrees - before.dirtrees <= delta.dirtrees <= after.dirtrees
    assert after.dirmetas - before.dirmetas <= delta.dirmetas <= after.dirmetas
    # an unchanged commit adds nothing
    same = added(where, commit_root(store.repo, new), commit_root(store.repo, new))
    assert (same.files, same.dirtrees, same.dirmetas) == (set(), set(), set())


def test_sync_pulled_syncs_the_added_objects_and_the_commit(store: Store, tree: Path) -> None:
    old = commit_tree(store, tree, "1.0")
    (tree / "lib" / "m02" / "f00002.py").write_text("changed\n")
    new = commit_tree(store, tree, "1.1")
    delta = added(
        store.repo_path / "objects", commit_root(store.repo, new), commit_root(store.repo, old)
    )
    synced = store.sync_pulled(new, old)
    assert synced == len(delta.files) + len(delta.dirtrees) + len(delta.dirmetas) + 1


def test_sync_pulled_falls_back_to_the_whole_filesystem_when_a_tree_cannot_be_read(
    store: Store, tree: Path
) -> None:
    old = commit_tree(store, tree, "1.0")
    (tree / "lib" / "m02" / "f00002.py").write_text("changed\n")
    new = commit_tree(store, tree, "1.1")
    root, _ = commit_root(store.repo, new)
    object_file(store, root, "dirtree").unlink()
    assert store.sync_pulled(new, old) == -1


@contextlib.contextmanager
def unblocking(fifo: Path) -> Iterator[threading.Event]:
    """No writer ever opens ``fifo``: a blocking open of it for reading would never return.
    Should one still be waiting after a minute, a writer is opened (again, until the block
    ends) to let it go on, and the event is set: the test fails instead of hanging."""
    unblocked, done = threading.Event(), threading.Event()

    def watch() -> None:
        while not done.wait(60 if not unblocked.is_set() else 0.1):
            with contextlib.suppress(OSError):  # no reader waiting: ENXIO
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                unblocked.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield unblocked
    finally:
        done.set()
        watcher.join()


def test_a_file_object_replaced_by_a_fifo_is_refused_without_blocking(
    store: Store, tree: Path
) -> None:
    commit = commit_tree(store, tree, "1.0")
    found = reached(store.repo_path / "objects", *commit_root(store.repo, commit))
    victim = next(c for c in sorted(found.files) if not object_file(store, c).is_symlink())
    path = object_file(store, victim)
    path.unlink()
    os.mkfifo(path)
    with unblocking(path) as unblocked:
        assert not file_matches(store.repo_path / "objects", victim)
        with pytest.raises(CorruptObject) as caught:
            store.fsck(commit)
    assert not unblocked.is_set()
    assert caught.value.data == {"error": "CorruptObject", "object": victim}
    assert not path.exists()
    assert store.is_partial(commit)


def test_a_directory_tree_replaced_by_a_fifo_is_refused_without_blocking(
    store: Store, tree: Path
) -> None:
    commit = commit_tree(store, tree, "1.0")
    root, _ = commit_root(store.repo, commit)
    path = object_file(store, root, "dirtree")
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(objects.BadObject):
        reached(store.repo_path / "objects", *commit_root(store.repo, commit))
    with pytest.raises(CorruptObject):
        store.fsck(commit)
    assert not path.exists()


def test_a_directory_metadata_rewritten_is_refused(store: Store, tree: Path) -> None:
    """A dirmeta holds a directory's mode: one rewritten to 0777 must not be checked out."""
    commit = commit_tree(store, tree, "1.0")
    _, meta = commit_root(store.repo, commit)
    path = object_file(store, meta, "dirmeta")
    data = bytearray(path.read_bytes())
    # (uuua(ayay)): uid, gid, then the mode, big-endian
    assert int.from_bytes(data[8:12], "big") & 0o777 == 0o755
    data[8:12] = (0o40777).to_bytes(4, "big")
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptObject) as caught:
        store.fsck(commit)
    assert caught.value.data == {"error": "CorruptObject", "object": meta}
    assert not path.exists()
    assert store.is_partial(commit)
