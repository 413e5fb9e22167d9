"""A commit's objects in the store's ``bare-user-only`` repository, read as files: which ones it
reaches, which of them an earlier commit did not, and whether each matches its checksum.

libostree answers the same questions (``traverse_commit``, ``fsck_object``) at about four times
the cost for a tree of 2000 files: its traversal hands Python a table of ``GVariant`` keys, and
it checks each file through GIO streams. Here the directory trees are read from their files
(each checked against its own checksum first) and parsed by GLib, and a file's checksum is
recomputed with :mod:`hashlib` over the header libostree hashes (serialized by GLib) and the
content. A match proves
the object whole; anything else (a mismatch, a symlink, an odd mode) is decided by libostree's
``fsck_object``, so this can only ever be faster, never more lenient.

An update's pull runs without libostree's sync of the whole filesystem; :func:`sync_objects`
then makes durable what it wrote, in order: each object it added (a symlink object, stored as
a real symlink in ``bare-user-only``, is never opened: the fsync of its directory makes it
durable), the directories holding them, then what libostree wrote last: the state directory
(the removal of the commit's ``.commitpartial`` marker) and the remote-tracking ref. The pull
itself wrote the ref and removed the marker before anything was synced, so a crash during the
pull can leave them on disk ahead of an object; that commit then looks whole and is not pulled
again, but the deployment's check of every object (``Store.fsck``) finds the missing or damaged
one, deletes it, marks the commit partial again, and the next pull fetches it. The ordered
syncs make sure that once an update's pull returns, nothing of it is left to that path.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import stat
import struct
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiki_updater.gio import fsync_dir, lib
from kiki_updater.verified import Stat, stat_key

__all__ = [
    "BadObject",
    "Parsed",
    "Reached",
    "Tree",
    "added",
    "commit_root",
    "file_matches",
    "file_stat",
    "file_verified",
    "object_file",
    "object_path",
    "reached",
    "read_meta",
    "sync_objects",
]

CHUNK = 1 << 20

# a directory tree parsed: (name, file checksum), (name, tree checksum, metadata checksum)
Tree = tuple[list[tuple[str, str]], list[tuple[str, str, str]]]


class BadObject(Exception):
    """An object does not match its checksum, or is missing."""

    def __init__(self, kind: str, checksum: str, why: str) -> None:
        super().__init__(f"{kind} {checksum[:12]}: {why}")
        self.kind = kind
        self.checksum = checksum


@dataclass
class Reached:
    """What a commit reaches: its file objects and its directory objects (``dirtree`` and
    ``dirmeta``), each by checksum."""

    files: set[str] = field(default_factory=set)
    dirtrees: set[str] = field(default_factory=set)
    dirmetas: set[str] = field(default_factory=set)

    def paths(self, objects: Path) -> Iterator[Path]:
        for kind, sums in (
            ("file", self.files),
            ("dirtree", self.dirtrees),
            ("dirmeta", self.dirmetas),
        ):
            for checksum in sums:
                yield object_path(objects, checksum, kind)


def object_file(objects: Path | str, checksum: str, kind: str) -> str:
    """Where the repository keeps object ``checksum`` of ``kind`` (``file``, ``dirtree``...):
    a string, for the loops over every file of a commit (a :class:`Path` costs more)."""
    return f"{objects}/{checksum[:2]}/{checksum[2:]}.{kind}"


def object_path(objects: Path, checksum: str, kind: str) -> Path:
    return Path(object_file(objects, checksum, kind))


class Parsed:
    """Directory trees parsed by this process, by checksum: a checksum names immutable bytes,
    so a parse never changes, and a tree is still checked against its checksum each time before
    its parse is used (:func:`reached`). Kept in memory only: what a file said could hide an
    object from the check or name a file to open. At most :data:`LIMIT` trees (then it starts
    again: a tree of 50 entries holds about 12 kB parsed; 2000 trees are some 50 releases of an
    app of 2000 files); :meth:`keep` drops the pruned ones."""

    LIMIT = 2_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._trees: dict[str, Tree] = {}

    def __len__(self) -> int:
        return len(self._trees)

    def __contains__(self, checksum: object) -> bool:
        return checksum in self._trees

    def parse(self, checksum: str, data: bytes) -> Tree:
        """The parse of tree ``checksum`` whose bytes, ``data``, the caller has checked."""
        with self._lock:
            known = self._trees.get(checksum)
        if known is None:
            known = parse_dirtree(data)
            with self._lock:
                if len(self._trees) >= self.LIMIT:
                    self._trees.clear()
                self._trees[checksum] = known
        return known

    def keep(self, objects: Path) -> None:
        """Forget the trees no longer in the repository at ``objects``."""
        with self._lock:
            checksums = list(self._trees)
        gone = [c for c in checksums if not os.path.exists(object_file(objects, c, "dirtree"))]
        with self._lock:
            for checksum in gone:
                self._trees.pop(checksum, None)


def parse_dirtree(data: bytes) -> Tree:
    """A serialized ``(a(say)a(sayay))``, read by GLib: (name, file checksum) and (name,
    dirtree checksum, dirmeta checksum). Each checksum is taken as its bytes, not unpacked into
    a list of integers (that costs about fifteen times as much)."""
    glib = lib().GLib
    tree = glib.Variant.new_from_bytes(_dirtree_type(), glib.Bytes.new(data), False)
    files_v, dirs_v = tree.get_child_value(0), tree.get_child_value(1)
    files = []
    for i in range(files_v.n_children()):
        entry = files_v.get_child_value(i)
        files.append((entry.get_child_value(0).get_string(), _hex(entry.get_child_value(1))))
    dirs = []
    for i in range(dirs_v.n_children()):
        entry = dirs_v.get_child_value(i)
        dirs.append(
            (
                entry.get_child_value(0).get_string(),
                _hex(entry.get_child_value(1)),
                _hex(entry.get_child_value(2)),
            )
        )
    return files, dirs


@functools.cache
def _dirtree_type() -> Any:
    return lib().GLib.VariantType.new("(a(say)a(sayay))")


def _hex(checksum: Any) -> str:
    """An ``ay`` checksum as hex."""
    data: bytes = checksum.get_data_as_bytes().get_data()
    return data.hex()


def read_meta(objects: Path, checksum: str, kind: str) -> bytes:
    """A metadata object's bytes (``dirtree``, ``dirmeta``), checked against its checksum
    (:class:`BadObject`)."""
    try:
        fd = os.open(
            object_file(objects, checksum, kind),
            os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
        )
    except FileNotFoundError:
        raise BadObject(kind, checksum, "missing") from None
    except OSError as exc:  # a symlink in its place: never one of libostree's
        raise BadObject(kind, checksum, exc.strerror or "unreadable") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BadObject(kind, checksum, "not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read()
    finally:
        os.close(fd)
    if hashlib.sha256(data).hexdigest() != checksum:
        raise BadObject(kind, checksum, "does not match its checksum")
    return data


def reached(objects: Path, root_tree: str, root_meta: str, parsed: Parsed | None = None) -> Reached:
    """Every object below a commit's root (``root_tree``, ``root_meta``); each directory tree
    is checked against its checksum before it is read (:class:`BadObject`). ``parsed``: trees
    parsed before (a tree found there is still checked, not parsed again); the trees parsed
    here are added to it."""
    out = Reached(dirmetas={root_meta})
    pending = [root_tree]
    if parsed is None:
        parsed = Parsed()
    while pending:
        tree = pending.pop()
        if tree in out.dirtrees:
            continue
        out.dirtrees.add(tree)
        files, dirs = parsed.parse(tree, read_meta(objects, tree, "dirtree"))
        out.files.update(checksum for _, checksum in files)
        for _, subtree, meta in dirs:
            out.dirmetas.add(meta)
            pending.append(subtree)
    return out


def added(objects: Path, root: tuple[str, str], since: tuple[str, str]) -> Reached:
    """The objects below ``root`` (a commit's root tree and metadata) that are not below
    ``since`` at the same path: a directory whose tree is the same in both is not read."""
    out = Reached()
    pending: list[tuple[str, str, str | None]] = [(root[0], root[1], since[0])]
    if root[1] != since[1]:
        out.dirmetas.add(root[1])
    while pending:
        tree, _, before = pending.pop()
        if tree == before or tree in out.dirtrees:
            continue
        out.dirtrees.add(tree)
        files, dirs = parse_dirtree(read_meta(objects, tree, "dirtree"))
        old_files: dict[str, str] = {}
        old_dirs: dict[str, tuple[str, str]] = {}
        if before is not None:
            was_files, was_dirs = parse_dirtree(read_meta(objects, before, "dirtree"))
            old_files = dict(was_files)
            old_dirs = {name: (sub, meta) for name, sub, meta in was_dirs}
        out.files.update(c for name, c in files if old_files.get(name) != c)
        for name, subtree, meta in dirs:
            old_sub, old_meta = old_dirs.get(name, (None, None))
            if meta != old_meta:
                out.dirmetas.add(meta)
            pending.append((subtree, meta, old_sub))
    return out


@functools.cache
def _file_header(mode: int) -> bytes:
    """What libostree hashes before a ``bare-user-only`` file's content: its header
    ``(uuuusa(ayay))`` serialized by GLib (uid 0, gid 0, mode, rdev 0, no symlink target, no
    xattrs; libostree stores the integers big-endian), prefixed by its size and padded to 8
    bytes."""
    big_endian = int.from_bytes(mode.to_bytes(4, "big"), sys.byteorder)
    header = lib().GLib.Variant("(uuuusa(ayay))", (0, 0, big_endian, 0, "", []))
    body: bytes = header.get_data_as_bytes().get_data()
    return struct.pack(">I", len(body)) + b"\0\0\0\0" + body


def file_matches(objects: Path, checksum: str) -> bool:
    """Whether the regular file object ``checksum`` hashes to its name. False for anything
    that is not a regular file: libostree decides those."""
    return file_verified(objects, checksum) is not None


def file_verified(objects: Path, checksum: str) -> Stat | None:
    """The stat (taken before reading) of the regular file object ``checksum`` when it hashes
    to its name, else None (anything that is not a regular file too: libostree decides
    those)."""
    try:
        # Non-blocking: an object replaced by a FIFO must not stall the check (read never
        # blocks on a regular file, so the flag changes nothing for a genuine object).
        fd = os.open(
            object_file(objects, checksum, "file"),
            os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
        )
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        digest = hashlib.sha256(_file_header(info.st_mode))
        # One read for a file that fits (most); a file that grew meanwhile is read to its end.
        want = min(info.st_size + 1, CHUNK)
        while chunk := os.read(fd, want):
            digest.update(chunk)
            if len(chunk) < want:
                break
            want = CHUNK
    finally:
        os.close(fd)
    return stat_key(info) if digest.hexdigest() == checksum else None


def file_stat(objects: Path, checksum: str) -> Stat | None:
    """The stat of file object ``checksum`` as :func:`file_verified` takes it (None: not
    there)."""
    try:
        return stat_key(os.lstat(object_file(objects, checksum, "file")))
    except OSError:
        return None


def sync_objects(
    repo_path: Path, commit: str, new: Reached, remote_ref: tuple[str, str] | None = None
) -> int:
    """Make ``new`` (objects a pull just wrote, unsynced) and ``commit`` durable: each file
    fsync'd, then each directory holding one, then the state directory and ``remote_ref``
    (remote, ref) the pull wrote: what libostree's sync of the whole filesystem would have made
    durable of this pull. The number of objects synced. An :class:`OSError` (an object gone or
    unreadable) is the caller's to answer with a sync of the whole filesystem."""
    objects = repo_path / "objects"
    paths = [*new.paths(objects), object_path(objects, commit, "commit")]
    meta = object_path(objects, commit, "commitmeta")
    if meta.exists():
        paths.append(meta)
    for path in paths:
        _fsync_object(path)
    for directory in {p.parent for p in paths} | {objects}:
        fsync_dir(directory)
    fsync_dir(repo_path / "state")
    if remote_ref is not None:
        ref = repo_path / "refs" / "remotes" / remote_ref[0] / remote_ref[1]
        _fsync_object(ref)
        fsync_dir(ref.parent)
    return len(paths)


def _fsync_object(path: Path) -> None:
    """fsync a regular file, never through a symlink: a symlink object's target is the
    publisher's (relative, absent, a FIFO that would block the open, a host file); the link
    itself is made durable by the fsync of its directory."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_root(repo: Any, commit: str) -> tuple[str, str]:
    """The root directory tree and metadata checksums of ``commit`` (libostree reads it)."""
    _, variant, _ = repo.load_commit(commit)
    return (
        bytes(variant.get_child_value(6).get_data_as_bytes().get_data()).hex(),
        bytes(variant.get_child_value(7).get_data_as_bytes().get_data()).hex(),
    )
