"""The record of file objects already hashed whole (``verified.py``) and the store's check
built on it: an object is hashed again when its stat changed, when its record lapsed, or when
the record cannot be read; a directory tree is still checked when its parse is recorded."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kiki_updater import objects, verified
from kiki_updater.gio import commit_dir
from kiki_updater.objects import commit_root, reached
from kiki_updater.store import CorruptObject, Store
from kiki_updater.verified import REVERIFY_AFTER, Verified
from kikitest.ostree_fixtures import make_app_tree

pytestmark = pytest.mark.unit

APP = "org.example.player"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "ostree")


@pytest.fixture
def commit(store: Store, tmp_path: Path) -> str:
    tree = make_app_tree(tmp_path / "src", APP, "1.0", files=60, size=500)
    return commit_dir(store.repo, tree, "test/source", subject="1.0", metadata={"version": "1.0"})


def a_file_object(store: Store, commit: str) -> tuple[str, Path]:
    found = reached(store.repo_path / "objects", *commit_root(store.repo, commit))
    for checksum in sorted(found.files):
        path = objects.object_path(store.repo_path / "objects", checksum, "file")
        if not path.is_symlink() and path.stat().st_size > 0:
            return checksum, path
    raise AssertionError("no regular file object")


def flip(path: Path, *, keep_mtime: bool) -> None:
    """One byte changed in place (same inode, same size); ``keep_mtime``: the mtime put back."""
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.chmod(0o644)
    with path.open("r+b") as f:
        f.write(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_a_checked_commit_records_its_files_and_trees(store: Store, commit: str) -> None:
    assert store.verified.load() == {}
    files = store.fsck(commit)
    recorded = store.verified.load()
    found = reached(store.repo_path / "objects", *commit_root(store.repo, commit))
    regular = {
        c
        for c in found.files
        if not objects.object_path(store.repo_path / "objects", c, "file").is_symlink()
    }
    assert set(recorded) == regular
    assert len(found.files) == files
    assert set(store.verified.trees()) == found.dirtrees


def test_an_object_rewritten_after_its_check_is_found_and_its_record_dropped(
    store: Store, commit: str
) -> None:
    store.fsck(commit)
    victim, path = a_file_object(store, commit)
    flip(path, keep_mtime=False)  # any write sets the mtime: the stat no longer matches
    with pytest.raises(CorruptObject) as caught:
        store.fsck(commit)
    assert caught.value.data == {"error": "CorruptObject", "object": victim}
    assert not path.exists()
    assert victim not in store.verified.load()


def test_an_object_whose_stat_is_unchanged_is_not_hashed_again_until_its_record_lapses(
    store: Store, commit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The one change a record cannot see (the mtime put back by hand): it proves the record
    # is used, and that a lapsed record brings the hash back.
    store.fsck(commit)
    victim, path = a_file_object(store, commit)
    flip(path, keep_mtime=True)
    assert store.fsck(commit) > 0
    monkeypatch.setattr(verified, "REVERIFY_AFTER", -1)
    with pytest.raises(CorruptObject) as caught:
        store.fsck(commit)
    assert caught.value.data == {"error": "CorruptObject", "object": victim}


def test_an_unreadable_record_means_every_object_is_hashed(store: Store, commit: str) -> None:
    store.fsck(commit)
    victim, path = a_file_object(store, commit)
    flip(path, keep_mtime=True)
    store.verified.path.write_bytes(b'{"files": {"')  # torn
    with pytest.raises(CorruptObject) as caught:
        Store(store.root).fsck(commit)  # a fresh start: nothing kept in memory
    assert caught.value.data == {"error": "CorruptObject", "object": victim}


def test_a_file_changed_within_the_racy_window_is_not_recorded(store: Store, commit: str) -> None:
    victim, path = a_file_object(store, commit)
    os.utime(path)  # mtime now: a write in the same tick as the check could keep it so
    store.fsck(commit)
    recorded = store.verified.load()
    assert victim not in recorded
    assert len(recorded) > 0
    flip(path, keep_mtime=True)
    with pytest.raises(CorruptObject):
        store.fsck(commit)


def test_a_damaged_tree_is_refused_though_its_parse_is_recorded(store: Store, commit: str) -> None:
    store.fsck(commit)
    found = reached(store.repo_path / "objects", *commit_root(store.repo, commit))
    root_tree, _ = commit_root(store.repo, commit)
    (tree,) = [t for t in found.dirtrees if t != root_tree][:1]
    assert tree in store.verified.trees()
    path = objects.object_path(store.repo_path / "objects", tree, "dirtree")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptObject):
        store.fsck(commit)


def test_the_record_round_trips_drops_lapses_and_ignores_malformed_entries(
    tmp_path: Path,
) -> None:
    record = Verified(tmp_path / "verified.json")
    now = int(time.time())
    record.update(
        {"aa": ((1, 2, 3, 0), now), "bb": ((1, 3, 4, 0), now - REVERIFY_AFTER - 10)},
        trees={"t1": ([("f", "aa")], [("d", "t2", "m2")])},
    )
    fresh = Verified(record.path)  # read from the file, not from memory
    assert fresh.load() == {"aa": ((1, 2, 3, 0), now)}  # bb lapsed
    assert fresh.trees() == {"t1": ([("f", "aa")], [("d", "t2", "m2")])}
    fresh.update({"cc": ((1, 5, 6, 0), now)}, drop=["aa"])
    assert set(Verified(record.path).load()) == {"cc"}
    fresh.update({"dd": ((1, 7, 8, 0), now)}, keep_only=True)
    assert set(Verified(record.path).load()) == {"dd"}
    assert Verified(record.path).trees() == {}
    record.path.write_bytes(
        b'{"files": {"ee": [1, 2, 3, 0, %d], "ff": [1, "x", 3, 0, 1], "gg": 5},'
        b' "trees": {"t": [[["f", "ee"]]], "u": [[], []]}}' % now
    )
    assert set(Verified(record.path).load()) == {"ee"}
    assert Verified(record.path).trees() == {"u": ([], [])}
