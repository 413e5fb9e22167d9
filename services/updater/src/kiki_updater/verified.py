"""The file objects the store has hashed and found whole, each recorded by what a change of its
bytes would change: the file's ``(dev, ino, size, mtime)``. A later check of a commit hashes
again only the objects whose stat differs from the record (the few a pull added, any that was
rewritten) or whose record is older than :data:`REVERIFY_AFTER`.

Why a matching stat still means the bytes checked: libostree writes every file object of a
``bare-user-only`` repository with mtime 0, and any write to a file (``write``, ``truncate``, an
``mmap`` store) sets its mtime to the current time; a file put in an object's place is another
inode. The ctime would be stricter but is no use here: every checkout and removal of a
deployment (hard links made and dropped) changes it. A file whose mtime is within
:data:`RACY_NS` of the check is not recorded (timestamps are coarse: a write in the same tick
as the check could leave the mtime unchanged), so it is hashed again next time.

What a record cannot see is a change that leaves the stat as it was: a write followed by
``utime`` back to mtime 0, or a disk that returns other bytes than were written. The first
needs the repository owner's rights (who could as well rewrite this file); the second is why a
record lapses after :data:`REVERIFY_AFTER`: each object is hashed again at least that often.

The file is rewritten whole (a new file renamed in) and never synced: lost, torn or
unreadable, it is an empty record and every object is hashed again.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import orjson

__all__ = ["RACY_NS", "REVERIFY_AFTER", "Stat", "Tree", "Verified", "recordable", "stat_key"]

REVERIFY_AFTER = 24 * 3600  # seconds
RACY_NS = 2_000_000_000

# (dev, ino, size, mtime_ns)
Stat = tuple[int, int, int, int]
# a directory tree parsed: (name, file checksum), (name, tree checksum, metadata checksum)
Tree = tuple[list[tuple[str, str]], list[tuple[str, str, str]]]


def stat_key(info: os.stat_result) -> Stat:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def recordable(key: Stat, started_ns: int) -> bool:
    """Whether a file hashed whole with stat ``key`` may be recorded: its mtime is not within
    :data:`RACY_NS` of ``started_ns`` (the check's start)."""
    return key[3] < started_ns - RACY_NS


class Verified:
    """The record at ``path``, shared by the threads of one store (updates of two apps check
    their commits at once). What was last read or written is kept in memory while the file
    is the same inode and mtime (each write renames a new file in)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._memo: tuple[Stat, dict[str, tuple[Stat, int]], dict[str, Tree]] | None = None

    def load(self) -> dict[str, tuple[Stat, int]]:
        """checksum -> (stat when hashed, when hashed in seconds), lapsed records left out."""
        with self._lock:
            return dict(self._read()[0])

    def trees(self) -> dict[str, Tree]:
        """Directory trees parsed before, by checksum: a tree's checksum names its bytes, so
        its parse never changes (the bytes are still checked each time: ``objects.py``)."""
        with self._lock:
            return dict(self._read()[1])

    def update(
        self,
        add: dict[str, tuple[Stat, int]],
        drop: Iterable[str] = (),
        *,
        trees: dict[str, Tree] | None = None,
        keep_only: bool = False,
    ) -> None:
        """Record ``add`` and ``trees`` and forget ``drop``; with ``keep_only``, forget every
        other one."""
        with self._lock:
            files, parsed = ({}, {}) if keep_only else self._read()
            files = {**files, **add}
            for checksum in drop:
                files.pop(checksum, None)
            parsed = {**parsed, **(trees or {})}
            body = orjson.dumps(
                {"files": {c: [*s, at] for c, (s, at) in files.items()}, "trees": parsed}
            )
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}")
            try:
                tmp.write_bytes(body)
                # Not renamed over the old record: ext4 (auto_da_alloc) would then write this
                # file out at the next fsync of anything, the update's own durable writes.
                self.path.unlink(missing_ok=True)
                os.rename(tmp, self.path)
                self._memo = (stat_key(os.stat(self.path)), files, parsed)
            except OSError:  # a record not written costs hashing again, nothing else
                self._memo = None
                with contextlib.suppress(OSError):
                    tmp.unlink()

    def _read(self) -> tuple[dict[str, tuple[Stat, int]], dict[str, Tree]]:
        try:
            key = stat_key(os.stat(self.path))
        except OSError:
            return {}, {}
        if self._memo is not None and self._memo[0] == key:
            files, trees = self._memo[1], self._memo[2]
        else:
            try:
                raw = orjson.loads(self.path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                return {}, {}
            if not isinstance(raw, dict):
                return {}, {}
            files, trees = _files(raw.get("files")), _trees(raw.get("trees"))
            self._memo = (key, files, trees)
        oldest = int(time.time()) - REVERIFY_AFTER
        if any(at < oldest for _, at in files.values()):
            files = {c: r for c, r in files.items() if r[1] >= oldest}
        return files, trees


def _files(raw: object) -> dict[str, tuple[Stat, int]]:
    if not isinstance(raw, dict):
        return {}
    out: dict[str, tuple[Stat, int]] = {}
    for checksum, entry in raw.items():
        if (
            isinstance(checksum, str)
            and isinstance(entry, list)
            and len(entry) == 5
            and all(type(v) is int for v in entry)
        ):
            out[checksum] = ((entry[0], entry[1], entry[2], entry[3]), entry[4])
    return out


def _trees(raw: object) -> dict[str, Tree]:
    if not isinstance(raw, dict):
        return {}
    out: dict[str, Tree] = {}
    for checksum, entry in raw.items():
        with contextlib.suppress(ValueError, TypeError):
            files, dirs = entry
            out[str(checksum)] = (
                [(str(n), str(c)) for n, c in files],
                [(str(n), str(t), str(m)) for n, t, m in dirs],
            )
    return out
