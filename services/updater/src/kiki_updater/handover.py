"""Files in a caller's directory, reached only through the directory's descriptor the caller
passed (``server.take_directory``): the updater runs as root, so it never follows a symlink
there, never blocks on a FIFO, and gives what it writes to the caller, mode 0600.

:func:`copy_in` copies one regular file out of the caller's directory into the updater's own
state (bounded); :func:`copy_out` writes one of the updater's files into it, replacing whatever
had the name (a symlink planted there is removed, never written through).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from libkiki.errors import InvalidParams, LimitExceeded, PermissionDenied
from libkiki.peer import PeerCred

__all__ = ["MAX_FILE", "check_taken", "copy_in", "copy_out"]

MAX_FILE = 1 << 32  # a delta file: an agent's code or state
_CHUNK = 1 << 20
_MAX_UP = 4096


def check_taken(
    name: str, dirfd: int, peer: PeerCred | None, own_uid: int, own: Iterable[Path]
) -> None:
    """The one rule for a directory a caller passed (a directory install, an agent's export or
    import): a directory, owned by the caller's uid (root and the updater itself may pass any
    of theirs), and never one of ``own`` (the updater's state) or inside it: delta files
    written into its repository would break it, and a source there would be its own files."""
    info = os.fstat(dirfd)
    if not stat.S_ISDIR(info.st_mode):
        raise InvalidParams(f"{name}: the descriptor passed is not a directory")
    if peer is not None and peer.uid not in (0, own_uid) and info.st_uid != peer.uid:
        raise PermissionDenied(f"{name}: not yours (uid {info.st_uid}): the updater runs as root")
    marks: dict[tuple[int, int], Path] = {}
    for path in own:
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(path)
            marks[st.st_dev, st.st_ino] = path
    fd = os.dup(dirfd)
    try:
        # up through ".." from the descriptor itself: no path of the caller's is resolved
        for _ in range(_MAX_UP):
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in marks:
                raise InvalidParams(
                    f"{name}: inside the updater's state ({marks[st.st_dev, st.st_ino]})"
                )
            parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = parent
            up = os.fstat(fd)
            if (up.st_dev, up.st_ino) == (st.st_dev, st.st_ino):
                return  # the root
    finally:
        os.close(fd)


def copy_in(dirfd: int, name: str, into: Path, limit: int = MAX_FILE) -> None:
    """Copy the regular file ``name`` of the directory at ``dirfd`` to ``into`` (new, 0600)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dirfd)
    except OSError as exc:
        raise InvalidParams(f"{name}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidParams(f"{name} is not a regular file")
        out = os.open(into, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with open(out, "wb") as f:
            copied = 0
            while chunk := os.read(fd, _CHUNK):
                copied += len(chunk)
                if copied > limit:
                    raise LimitExceeded(f"{name} is larger than {limit >> 20} MiB")
                f.write(chunk)
    finally:
        os.close(fd)


def copy_out(path: Path, dirfd: int, name: str, owner: tuple[int, int] | None) -> None:
    """Write the file ``path`` as ``name`` in the directory at ``dirfd``: mode 0600, owned by
    ``owner`` (uid, gid) when given, durable."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dirfd)  # a file or a symlink of that name: never written through
    out = os.open(
        name,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
        dir_fd=dirfd,
    )
    with open(out, "wb") as f, path.open("rb") as src:
        if owner is not None:
            os.fchown(f.fileno(), *owner)
        while chunk := src.read(_CHUNK):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
