"""The record of file objects already hashed whole (``verified.py``) and the store's check
built on it: an object is hashed again when its stat changed, when its record lapsed, is from
another boot or cannot be read; directory trees are parsed once per process, never read back
from the record."""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from kiki_updater import objects, verified
from kiki_updater.gio import commit_dir
from kiki_updater.objects import commit_root, reached
from kiki_updater.store import CorruptObject, Store
from kiki_updater.verified import REVERIFY_AFTER, SKEW, Verified
from kikitest.ostree_fixtures import make_app_tree

pytestmark = pytest.mark.unit

APP = "org.example.player"
A, B, C, D = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)
MODE = 0o100644


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "ostree")


@pytest.fixture
def commit(store: Store, tmp_path: Path) -> str:
    tree = make_app_tree(tmp_path / "src", APP, "1.0", files=60, size=500)
    return commit_dir(store.repo, tree, "test/source", subject="1.0", metadata={"version": "1.0"})


def file_objects(store: Store, commit: str) -> list[tuple[str, Path]]:
    found = reached(store.repo_path / "objects", *commit_root(store.repo, commit))
    out = []
    for checksum in sorted(found.files):
        path = objects.object_path(store.repo_path / "objects", checksum, "file")
        if not path.is_symlink() and path.stat().st_size > 0:
            out.append((checksum, path))
    return out


def a_file_object(store: Store, commit: str) -> tuple[str, Path]:
    return file_objects(store, commit)[0]


def damaged(path: Path) -> bytes:
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    return bytes(data)


def flip(path: Path, *, keep_mtime: bool) -> None:
    """One byte changed in place (same inode, same size); ``keep_mtime``: the mtime put back."""
    before = path.stat()
    data = damaged(path)
    path.chmod(0o644)
    with path.open("r+b") as f:
        f.write(data)
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def edit_record(store: Store, change: dict[str, object]) -> None:
    record = orjson.loads(store.verified.path.read_bytes())
    record.update(change)
    store.verified.path.write_bytes(orjson.dumps(record))


def test_a_checked_commit_records_its_files_and_nothing_else(store: Store, commit: str) -> None:
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
    on_disk = orjson.loads(store.verified.path.read_bytes())
    assert set(on_disk) == {"format", "boot", "files"}
    assert verified.boot_id() is not None
    assert on_disk["boot"] == verified.boot_id()


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


def test_another_file_renamed_into_an_objects_place_is_found(store: Store, commit: str) -> None:
    # same size, mtime 0 as libostree writes them, mode kept: only the inode differs
    store.fsck(commit)
    victim, path = a_file_object(store, commit)
    before = path.stat()
    other = path.with_name("other")
    other.write_bytes(damaged(path))
    os.chmod(other, before.st_mode)
    os.utime(other, ns=(0, 0))
    os.rename(other, path)
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert after.st_ino != before.st_ino
    with pytest.raises(CorruptObject) as caught:
        store.fsck(commit)
    assert caught.value.data == {"error": "CorruptObject", "object": victim}


def check_while(
    store: Store,
    commit: str,
    path: Path,
    monkeypatch: pytest.MonkeyPatch,
    meanwhile: Callable[[], None],
) -> None:
    """A check of ``commit`` during which ``meanwhile`` runs once, right after the first read
    of ``path``'s object (while it is being hashed)."""
    inode = path.stat().st_ino
    read = os.read
    done = False

    def read_then(fd: int, n: int) -> bytes:
        nonlocal done
        data = read(fd, n)
        if not done and os.fstat(fd).st_ino == inode:
            done = True
            meanwhile()
        return data

    monkeypatch.setattr(os, "read", read_then)
    store.fsck(commit)
    monkeypatch.undo()
    assert done


def test_a_write_during_the_hash_is_found_at_the_next_check(
    store: Store, commit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write while the file is hashed: the bytes hashed were whole, but the write set the
    mtime, so the stat recorded (mtime 0, taken before reading) no longer matches: the next
    check hashes the file again. (A stat taken after reading would not be recorded either: its
    mtime is not 0. That the stat is taken before reading is tested with a file renamed in.)"""
    victim, path = a_file_object(store, commit)
    check_while(store, commit, path, monkeypatch, lambda: flip(path, keep_mtime=False))
    with pytest.raises(CorruptObject) as caught:
        store.fsck(commit)
    assert caught.value.data == {"error": "CorruptObject", "object": victim}


def test_a_file_renamed_in_during_the_hash_is_not_believed(
    store: Store, commit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another file renamed into the object's place while the object is hashed (same size, mode
    and mtime 0, damaged bytes): the bytes hashed were the object's, so the stat recorded must
    be that of the file read (taken before reading, by its descriptor), not of what the path
    names afterwards, or the damaged file would match the record."""
    victim, path = a_file_object(store, commit)

    def replace() -> None:
        other = path.with_name("other")
        other.write_bytes(damaged(path))
        os.chmod(other, path.stat().st_mode)
        os.utime(other, ns=(0, 0))
        os.rename(other, path)

    check_while(store, commit, path, monkeypatch, replace)
    with pytest.raises(CorruptObject) as caught:
        store.fsck(commit)
    assert caught.value.data == {"error": "CorruptObject", "object": victim}


def test_an_object_changed_through_a_shared_mapping_is_never_recorded(
    store: Store, commit: str
) -> None:
    """The kernel sets the mtime when a page of a shared writable mapping is first written,
    not at later stores to the page while it stays dirty. An object written so, its bytes whole
    again when a later check hashes it, must not be recorded by its new mtime: stores through
    the mapping after that check leave that mtime as it is."""
    store.fsck(commit)
    victim, path = a_file_object(store, commit)
    original = path.read_bytes()[0]
    fd = os.open(path, os.O_RDWR)
    try:
        with mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as mapped:
            mapped[0] = original ^ 0xFF  # the first store: the mtime set to now
            mapped[0] = original  # whole again, the page still dirty and writable
            assert path.stat().st_mtime_ns != 0
            assert store.fsck(commit) > 0  # whole: found so, not recorded
            assert victim not in store.verified.listed()
            mapped[0] = original ^ 0xFF  # no fault: the mtime may well stay as it was
            with pytest.raises(CorruptObject) as caught:
                store.fsck(commit)
            assert caught.value.data == {"error": "CorruptObject", "object": victim}
    finally:
        os.close(fd)


@pytest.mark.parametrize("age_s", [0, 3600, REVERIFY_AFTER])
def test_an_object_whose_mtime_is_not_0_is_hashed_at_every_check(
    store: Store, commit: str, age_s: int
) -> None:
    """libostree writes objects with mtime 0; any other mtime is a write's, recent or long ago,
    and is never recorded (all the other objects are)."""
    victim, path = a_file_object(store, commit)
    when = time.time_ns() - age_s * 1_000_000_000
    os.utime(path, ns=(when, when))
    store.fsck(commit)
    recorded = store.verified.load()
    assert victim not in recorded
    assert len(recorded) == len(file_objects(store, commit)) - 1
    flip(path, keep_mtime=True)
    with pytest.raises(CorruptObject) as caught:
        store.fsck(commit)
    assert caught.value.data == {"error": "CorruptObject", "object": victim}


def test_an_object_written_since_its_record_is_forgotten(store: Store, commit: str) -> None:
    """Found whole but written since its check (the same bytes written again): its record is
    dropped, so that a damaged copy put over it later with its mtime set back to 0 (as `cp -a`
    does) does not match it."""
    store.fsck(commit)
    victim, path = a_file_object(store, commit)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes())  # whole, the mtime now
    store.fsck(commit)
    assert victim not in store.verified.load()
    os.utime(path, ns=(0, 0))
    flip(path, keep_mtime=True)
    with pytest.raises(CorruptObject) as caught:
        store.fsck(commit)
    assert caught.value.data == {"error": "CorruptObject", "object": victim}


@pytest.mark.parametrize("mode", [0o777, 0o4777], ids=["0777", "4777"])
def test_a_mode_changed_after_its_check_is_found(store: Store, commit: str, mode: int) -> None:
    """In ``bare-user-only`` the mode is part of a file object's checksum, and ``chmod``
    changes neither its mtime nor its inode: the record holds the mode too."""
    store.fsck(commit)
    victim, path = a_file_object(store, commit)
    before = path.stat()
    assert before.st_mode & 0o7777 == 0o644
    path.chmod(mode)
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    with pytest.raises(CorruptObject) as caught:
        store.fsck(commit)
    assert caught.value.data == {"error": "CorruptObject", "object": victim}


@pytest.mark.parametrize("stamped", ["a day ago", "an hour ahead"])
def test_an_object_written_since_a_record_not_believed_now_is_forgotten(
    store: Store, commit: str, monkeypatch: pytest.MonkeyPatch, stamped: str
) -> None:
    """An entry lapsed or stamped ahead is not believed now but is still in the file; with the
    clock set back (or come forward) it would be believed again. One whose object was written
    since is forgotten all the same, so that a damaged copy with mtime 0 put over it later
    (``cp -a``) does not match it then."""
    now = int(time.time())
    monkeypatch.setattr(time, "time", lambda: float(now))
    store.fsck(commit)
    victim, path = a_file_object(store, commit)
    at = now - REVERIFY_AFTER - 60 if stamped == "a day ago" else now + 3600
    record = orjson.loads(store.verified.path.read_bytes())
    record["files"][victim][-1] = at
    store.verified.path.write_bytes(orjson.dumps(record))
    store = Store(store.root)
    assert victim in store.verified.listed()
    assert victim not in store.verified.load()
    path.chmod(0o644)
    path.write_bytes(path.read_bytes())  # whole, the mtime now
    assert store.fsck(commit) > 0  # every other object's record matches: only it is hashed
    assert victim not in store.verified.listed()
    os.utime(path, ns=(0, 0))
    flip(path, keep_mtime=True)
    monkeypatch.setattr(time, "time", lambda: float(at + 60))  # the entry would be believed
    with pytest.raises(CorruptObject) as caught:
        store.fsck(commit)
    assert caught.value.data == {"error": "CorruptObject", "object": victim}


def test_an_object_whose_stat_is_unchanged_is_not_hashed_again_until_its_record_lapses(
    store: Store, commit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The one change a record cannot see (the mtime put back, as `cp -a` does): it proves the
    # record is used, and that a lapsed record brings the hash back.
    store.fsck(commit)
    victim, path = a_file_object(store, commit)
    flip(path, keep_mtime=True)
    assert store.fsck(commit) > 0
    monkeypatch.setattr(verified, "REVERIFY_AFTER", 0)
    with pytest.raises(CorruptObject) as caught:
        store.fsck(commit)
    assert caught.value.data == {"error": "CorruptObject", "object": victim}


def test_a_record_from_another_boot_is_not_used(store: Store, commit: str) -> None:
    store.fsck(commit)
    victim, path = a_file_object(store, commit)
    flip(path, keep_mtime=True)
    assert Store(store.root).fsck(commit) > 0  # this boot's record: not hashed
    edit_record(store, {"boot": "another"})
    with pytest.raises(CorruptObject) as caught:
        Store(store.root).fsck(commit)
    assert caught.value.data == {"error": "CorruptObject", "object": victim}


def test_a_record_written_while_the_clock_was_ahead_is_not_used(
    store: Store, commit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 365 * 86400)
    store.fsck(commit)
    monkeypatch.setattr(time, "time", real)
    victim, path = a_file_object(store, commit)
    flip(path, keep_mtime=True)
    with pytest.raises(CorruptObject) as caught:
        Store(store.root).fsck(commit)
    assert caught.value.data == {"error": "CorruptObject", "object": victim}


def test_a_tree_list_in_the_record_is_never_read(store: Store, commit: str) -> None:
    """What a tree lists comes from the repository, never from the record: a record that left
    an object out of a tree, made one up, or named a file outside the repository changes
    nothing (the record's entries are still used)."""
    store.fsck(commit)
    victim, path = a_file_object(store, commit)
    outside = store.root / "precious.file"
    outside.write_bytes(b"not an object")
    found = reached(store.repo_path / "objects", *commit_root(store.repo, commit))
    trees = {t: [[["x", "../../precious"], ["ghost", "ab" * 32]], []] for t in found.dirtrees}
    edit_record(store, {"trees": trees})
    assert Store(store.root).fsck(commit) == len(found.files)
    assert outside.exists()
    flip(path, keep_mtime=False)
    with pytest.raises(CorruptObject) as caught:
        Store(store.root).fsck(commit)
    assert caught.value.data == {"error": "CorruptObject", "object": victim}
    assert outside.exists()


def test_trees_are_parsed_once_a_process_and_still_checked(
    store: Store, commit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    parses: list[bytes] = []
    parse = objects.parse_dirtree

    def counted(data: bytes) -> objects.Tree:
        parses.append(data)
        return parse(data)

    monkeypatch.setattr(objects, "parse_dirtree", counted)
    store.fsck(commit)
    first = len(parses)
    assert first > 0
    store.fsck(commit)
    assert len(parses) == first  # kept in memory
    Store(store.root).fsck(commit)
    assert len(parses) == 2 * first  # another process (store) parses again
    found = reached(store.repo_path / "objects", *commit_root(store.repo, commit))
    root_tree, _ = commit_root(store.repo, commit)
    tree = next(t for t in sorted(found.dirtrees) if t != root_tree)
    assert tree in store.parsed
    path = objects.object_path(store.repo_path / "objects", tree, "dirtree")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptObject):
        store.fsck(commit)


def test_an_unreadable_record_means_every_object_is_hashed(store: Store, commit: str) -> None:
    store.fsck(commit)
    victim, path = a_file_object(store, commit)
    flip(path, keep_mtime=True)
    store.verified.path.write_bytes(b'{"files": {"')  # torn
    with pytest.raises(CorruptObject) as caught:
        Store(store.root).fsck(commit)  # a fresh start: nothing kept in memory
    assert caught.value.data == {"error": "CorruptObject", "object": victim}


def test_a_failed_record_write_leaves_no_record(store: Store, commit: str) -> None:
    store.fsck(commit)
    victim, path = a_file_object(store, commit)
    assert victim in store.verified.load()
    flip(path, keep_mtime=False)
    store.verified.temp_path.mkdir()  # the new record cannot be written
    with pytest.raises(CorruptObject):
        store.fsck(commit)
    assert not path.exists()
    assert not store.verified.path.exists()
    assert Store(store.root).verified.load() == {}


def test_a_prune_forgets_the_pruned_objects(store: Store, commit: str, tmp_path: Path) -> None:
    store.fsck(commit)
    before = file_objects(store, commit)
    trees = reached(store.repo_path / "objects", *commit_root(store.repo, commit)).dirtrees
    other = make_app_tree(tmp_path / "src2", APP, "2.0", files=3, size=100)
    later = commit_dir(store.repo, other, "test/source", subject="2.0", metadata={})
    store.fsck(later)
    pruned, _ = store.prune()
    assert pruned > 0
    gone = {c for c, path in before if not path.exists()}
    assert gone
    recorded = Verified(store.verified.path).load()
    assert recorded
    assert not gone & set(recorded)
    objects_dir = store.repo_path / "objects"
    gone_trees = {t for t in trees if not objects.object_path(objects_dir, t, "dirtree").exists()}
    assert gone_trees
    assert not [t for t in gone_trees if t in store.parsed]


def test_entries_hold_for_a_day_of_this_boot_and_never_from_ahead(tmp_path: Path) -> None:
    record = Verified(tmp_path / "verified.json", boot="one")
    now = int(time.time())
    record.update(
        {
            A: ((1, 2, 3, 0, MODE), now),
            B: ((1, 3, 4, 0, MODE), now - REVERIFY_AFTER),  # a day old: lapsed
            C: ((1, 4, 5, 0, MODE), now + 10 * SKEW),  # from ahead: not believed
            D: ((1, 5, 6, 0, MODE), now - REVERIFY_AFTER + 3600),
        }
    )
    assert set(Verified(record.path, boot="one").load()) == {A, D}  # read from the file
    assert Verified(record.path, boot="two").load() == {}
    fresh = Verified(record.path, boot="one")
    fresh.update({C: ((1, 5, 6, 0, MODE), now)}, drop=[A])
    assert set(Verified(record.path, boot="one").load()) == {C, D}
    fresh.update({B: ((1, 7, 8, 0, MODE), now)}, keep_only=True)
    assert set(Verified(record.path, boot="one").load()) == {B}


def test_an_update_forgets_entries_lapsed_or_stamped_ahead(tmp_path: Path) -> None:
    """Not believed now, they would be again with the clock set back: they are not kept."""
    record = Verified(tmp_path / "verified.json", boot="one")
    now = int(time.time())
    record.update(
        {
            A: ((1, 2, 3, 0, MODE), now),
            B: ((1, 3, 4, 0, MODE), now - REVERIFY_AFTER),
            C: ((1, 4, 5, 0, MODE), now + 10 * SKEW),
        }
    )
    assert Verified(record.path, boot="one").listed() == {A, B, C}
    Verified(record.path, boot="one").update({D: ((1, 5, 6, 0, MODE), now)})
    assert Verified(record.path, boot="one").listed() == {A, D}


@pytest.mark.parametrize(
    "body",
    [
        {"format": 1, "boot": "one", "files": {A: [1, 2, 3, 0, 0]}},  # before the mode
        {"format": 3, "boot": "one", "files": {A: [1, 2, 3, 0, MODE, 0]}},
        {"boot": "one", "files": {A: [1, 2, 3, 0, MODE, 0]}},
        {
            "format": 2,
            "boot": "one",
            "files": {A: [1, 2, 3, 0, MODE, 0], "../../x": [1, 2, 3, 0, MODE, 0]},
        },
        {
            "format": 2,
            "boot": "one",
            "files": {A: [1, 2, 3, 0, MODE, 0], B.upper(): [1, 2, 3, 0, MODE, 0]},
        },
        {
            "format": 2,
            "boot": "one",
            "files": {A: [1, 2, 3, 0, MODE, 0], "ab": [1, 2, 3, 0, MODE, 0]},
        },
        {
            "format": 2,
            "boot": "one",
            "files": {A: [1, 2, 3, 0, MODE, 0], B: [1, "x", 3, 0, MODE, 0]},
        },
        {"format": 2, "boot": "one", "files": {A: [1, 2, 3, 0, MODE, 0], B: [1, 2, 3, 0, MODE]}},
        {"format": 2, "boot": "one", "files": {A: [1, 2, 3, 0, MODE, 0], B: [1, 2, 3, 5, MODE, 0]}},
        {"format": 1, "boot": "one", "files": [A]},
        [1],
    ],
)
def test_a_record_with_anything_malformed_is_ignored_whole(tmp_path: Path, body: object) -> None:
    path = tmp_path / "verified.json"
    good = {"format": 2, "boot": "one", "files": {A: [1, 2, 3, 0, MODE, int(time.time())]}}
    path.write_bytes(orjson.dumps(good))
    assert set(Verified(path, boot="one").load()) == {A}
    if isinstance(body, dict) and isinstance(body.get("files"), dict):
        body["files"][A][-1] = int(time.time())
    path.write_bytes(orjson.dumps(body))
    assert Verified(path, boot="one").load() == {}


def test_a_record_larger_than_the_bound_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "verified.json"
    record = Verified(path, boot="one")
    record.update({A: ((1, 2, 3, 0, MODE), int(time.time()))})
    size = path.stat().st_size
    monkeypatch.setattr(verified, "MAX_BYTES", size)
    assert set(Verified(path, boot="one").load()) == {A}
    monkeypatch.setattr(verified, "MAX_BYTES", size - 1)
    assert Verified(path, boot="one").load() == {}


def test_new_records_left_by_a_killed_process_are_removed(tmp_path: Path) -> None:
    left = [tmp_path / ".verified.json.4242.139872", tmp_path / ".verified.json.1.2"]
    kept = [
        tmp_path / ".verified.json.1.2.bak",
        tmp_path / ".verified.json.x.2",
        tmp_path / ".other.json.1.2",
        tmp_path / "verified.json.1.2",
    ]
    for path in left + kept:
        path.write_bytes(b"{}")
    Verified(tmp_path / "verified.json", boot="one").load()
    assert [p for p in left if p.exists()] == []
    assert [p for p in kept if not p.exists()] == []
