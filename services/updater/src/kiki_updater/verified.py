"""The file objects the store has hashed and found whole, each recorded by what a change of
what its checksum covers (its bytes, its mode) would change: the file's
``(dev, ino, size, mtime, mode)``. A later check of a commit hashes again only the objects
whose stat differs from the record (the few a pull added, any that was rewritten or had its
mode changed) or whose record is not from this boot or not from the last
:data:`REVERIFY_AFTER`.

Why a matching stat still means the bytes checked: libostree writes every file object of a
``bare-user-only`` repository with mtime 0 (:data:`OBJECT_MTIME`), and only a file whose mtime
is still exactly that is recorded (:func:`recordable`). Any write to a file sets its mtime to
the current time, never 0: ``write``, ``truncate``, and the first store through a shared
writable ``mmap`` (the kernel sets the mtime when a clean page is first made writable, not at
later stores to a page still dirty, so a record of a written file's new mtime could not be
trusted: one is never made). A write after the check's stat, in the same clock tick as the
check or not, leaves an mtime that is not 0: no window to wait out. A file put in an object's
place is another inode. The mode is recorded because in ``bare-user-only`` it is part of the
object's checksum, and ``chmod`` changes neither the mtime nor the inode.

The ctime is not recorded although a write changes it too: it would add nothing against a
shared mapping (the kernel sets it with the mtime, at the same first store), and every hard
link made or dropped changes it, so each checkout and each removal of a deployment (every
object of the commit linked or unlinked) would make every record miss at the next check.

What a record cannot see is a change that leaves the stat as it was: bytes rewritten in place
with the mtime set back to 0 by ``utimensat``, which ordinary tools do (``cp -a`` or
``rsync -a --inplace`` of a damaged copy over an object keeps its inode and copies the copy's
mtime 0), a file deleted and another made in its place with mtime 0 that gets the freed inode
number, or a disk that returns other bytes than were written. Such a change is found when the
record lapses: it holds for one boot (the kernel's ``boot_id``: a power cycle, a restored image
or another filesystem with the same device number after a reboot all start from nothing) and
at most :data:`REVERIFY_AFTER` of it; an entry stamped later than now (a clock set back) is not
believed. Entries lapsed or stamped ahead are forgotten at the next rewrite of the record:
kept, a clock set back would make them believed again.

All this holds against the apps for a root updater only: objects (written with the commit's
mode) and the record are then root's. An updater that is not root owns both and runs the
health commands as itself, which may then write an object and set its mtime back to 0, or
rewrite the record.

Only checksums and stats are kept, each checksum checked for its form when read: what the
record says can make the check skip a hash, never name a file to open. A record of another
:data:`FORMAT`, another boot, larger than :data:`MAX_BYTES` or with one malformed entry (an
mtime other than :data:`OBJECT_MTIME` too) is ignored whole. The file is rewritten whole (the
old one removed first, a new one renamed in) and never synced: lost, torn, unreadable or not
written, it is an empty record and every object is hashed again.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import orjson

__all__ = [
    "FORMAT",
    "MAX_BYTES",
    "OBJECT_MTIME",
    "REVERIFY_AFTER",
    "SKEW",
    "Stat",
    "Verified",
    "boot_id",
    "recordable",
    "stat_key",
]

FORMAT = 2
REVERIFY_AFTER = 24 * 3600  # seconds
SKEW = 60  # seconds an entry may be stamped ahead of now (a clock adjusted meanwhile)
# The mtime libostree gives every file object, and the only one a record believes
OBJECT_MTIME = 0
# About 130 bytes an object: room for some 250,000; a larger record is not read (hashing again)
MAX_BYTES = 32 << 20

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_CHECKSUM = re.compile(r"[0-9a-f]{64}")

# (dev, ino, size, mtime_ns, st_mode)
Stat = tuple[int, int, int, int, int]
Files = dict[str, tuple[Stat, int]]


def stat_key(info: os.stat_result) -> Stat:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_mode)


def recordable(key: Stat) -> bool:
    """Whether a file hashed whole with stat ``key`` (taken before reading) may be recorded:
    its mtime is still the one libostree wrote it with. One written since (its mtime is the
    time of a write) is hashed at every check."""
    return key[3] == OBJECT_MTIME


@functools.cache
def boot_id() -> str | None:
    """This boot's id (the kernel makes a new one at each boot); None where there is none: no
    record is then kept."""
    try:
        text = BOOT_ID.read_text().strip()
    except OSError:
        return None
    return text or None


class Verified:
    """The record at ``path`` for the boot ``boot`` (this one's by default), shared by the
    threads of one store (updates of two apps check their commits at once). What was last read
    or written is kept in memory while the file is the same inode and mtime (each write makes a
    new file)."""

    def __init__(self, path: Path, boot: str | None = None) -> None:
        self.path = path
        self.boot = boot if boot is not None else boot_id()
        self._lock = threading.Lock()
        self._memo: tuple[Stat, Files] | None = None
        self._swept = False
        self._temp = re.compile(rf"\.{re.escape(path.name)}\.[0-9]+\.[0-9]+")

    @property
    def temp_path(self) -> Path:
        """Where this thread writes a new record before renaming it in."""
        return self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}")

    def load(self) -> Files:
        """checksum -> (stat when hashed, when hashed in seconds), lapsed entries and entries
        stamped ahead left out."""
        with self._lock:
            files = self._read()
        now = int(time.time())
        return {c: r for c, r in files.items() if _current(r[1], now)}

    def listed(self) -> frozenset[str]:
        """Every checksum the file holds, lapsed or stamped ahead too: an entry not believed
        now is believed again once the clock is set back, so one to be forgotten is looked for
        here, not in :meth:`load`."""
        with self._lock:
            return frozenset(self._read())

    def update(self, add: Files, drop: Iterable[str] = (), *, keep_only: bool = False) -> None:
        """Record ``add`` and forget ``drop``; with ``keep_only``, forget every other one. An
        entry lapsed or stamped ahead is forgotten too: kept, a clock set back would make it
        believed again."""
        with self._lock:
            now = int(time.time())
            kept = {} if keep_only else self._read()
            files = {c: r for c, r in kept.items() if _current(r[1], now)}
            files.update(add)
            for checksum in drop:
                files.pop(checksum, None)
            self._memo = None
            try:
                # Removed first: a record that cannot be written (a full disk) must not leave
                # the old one, which may list an object just deleted as corrupt.
                self.path.unlink(missing_ok=True)
            except OSError:
                return
            if self.boot is None or not files:
                return
            body = orjson.dumps(
                {
                    "format": FORMAT,
                    "boot": self.boot,
                    "files": {c: [*s, at] for c, (s, at) in files.items()},
                }
            )
            if len(body) > MAX_BYTES:
                return
            tmp = self.temp_path
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                try:
                    os.write(fd, body)
                finally:
                    os.close(fd)
                # Not renamed over an old record (there is none): ext4 (auto_da_alloc) would
                # then write this file out at the next fsync of anything, the update's own.
                os.rename(tmp, self.path)
                self._memo = (stat_key(os.stat(self.path)), files)
            except OSError:  # a record not written costs hashing again, nothing else
                with contextlib.suppress(OSError):
                    tmp.unlink()

    def _read(self) -> Files:
        if not self._swept:
            self._swept = True
            self._sweep()
        if self.boot is None:
            return {}
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return {}
        try:
            key = stat_key(info := os.fstat(fd))
            if self._memo is not None and self._memo[0] == key:
                return self._memo[1]
            if info.st_size > MAX_BYTES:
                return {}
            with os.fdopen(fd, "rb", closefd=False) as file:
                body = file.read(MAX_BYTES + 1)
        except OSError:
            return {}
        finally:
            os.close(fd)
        if len(body) > MAX_BYTES:
            return {}
        try:
            files = _parse(orjson.loads(body), self.boot)
        except orjson.JSONDecodeError:
            return {}
        if files:
            self._memo = (key, files)
        return files

    def _sweep(self) -> None:
        """Remove new records a killed process left unrenamed (only names this class makes)."""
        with contextlib.suppress(OSError), os.scandir(self.path.parent) as entries:
            for entry in entries:
                if self._temp.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)


def _current(at: int, now: int) -> bool:
    return at <= now + SKEW and now - at < REVERIFY_AFTER


def _parse(raw: object, boot: str) -> Files:
    """The entries of a record of this format and boot; any malformed entry: none."""
    if (
        not isinstance(raw, dict)
        or raw.get("format") != FORMAT
        or raw.get("boot") != boot
        or not isinstance(entries := raw.get("files"), dict)
    ):
        return {}
    out: Files = {}
    for checksum, entry in entries.items():
        if not (
            _CHECKSUM.fullmatch(checksum)
            and isinstance(entry, list)
            and len(entry) == 6
            and all(type(v) is int for v in entry)
            and entry[3] == OBJECT_MTIME
        ):
            return {}
        out[checksum] = ((entry[0], entry[1], entry[2], entry[3], entry[4]), entry[5])
    return out
