"""A directory only its owner (and one group) may enter: where ``kiki up`` puts its sockets.

On a device systemd creates ``/run/kiki`` and the sockets in it with the modes of the units; by
hand, ``kiki up`` must do the same itself and must not be tricked into using a directory someone
else prepared. The directory is created if missing; an existing one is used only when it is a
real directory (never a symlink, which is not followed), owned by us, under directories nobody
else can rename it out of. Mode bits wider than asked are removed (an older ``kiki up`` left
0755), and every entry must be ours: one planted while others could write there (a symlink
where a state file will be written, say) would outlive the repaired mode.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from libkiki.errors import PermissionDenied


def _check_component(component: Path, uid: int, gid: int) -> None:
    st = os.lstat(component)
    if st.st_uid not in (0, uid):
        raise PermissionDenied(f"{component} belongs to uid {st.st_uid}; refusing to use it")
    if stat.S_ISLNK(st.st_mode):
        return  # a symlink's own mode means nothing; where it leads is checked on its own
    writable_by_others = st.st_mode & 0o002 or (st.st_mode & 0o020 and st.st_gid != gid)
    if writable_by_others and not st.st_mode & stat.S_ISVTX:
        raise PermissionDenied(
            f"{component} is writable by others (mode {st.st_mode & 0o777:04o}) and not "
            "sticky; refusing to keep sockets under it"
        )


def _check_ancestors(parent: Path, uid: int, gid: int) -> None:
    # Whoever may write to a directory on the way can rename what follows away and put theirs
    # in its place, unless the directory is sticky (like /tmp), which protects entries of
    # other users: so every directory and symlink on the way, as written and as resolved, is
    # root's or ours, and none is writable by others unless sticky.
    absolute = parent.absolute()
    for chain in (absolute, absolute.resolve(strict=True)):
        for component in (chain, *chain.parents):
            _check_component(component, uid, gid)


def _check_entries(fd: int, path: Path, uid: int) -> None:
    with os.scandir(fd) as entries:
        for entry in entries:
            owner = entry.stat(follow_symlinks=False).st_uid
            if owner != uid:
                raise PermissionDenied(
                    f"{path / entry.name} belongs to uid {owner}, not to you; someone else could "
                    f"write to {path}: remove it and start again"
                )


def ensure_private_dir(path: Path, *, mode: int = 0o750, gid: int | None = None) -> int | None:
    """Create or check ``path`` as a directory of ours with at most ``mode``, group ``gid``
    (default: our effective group). Returns the old mode when an existing directory's mode was
    narrowed, else ``None``; raises :class:`PermissionDenied` when it cannot be made safe."""
    uid = os.geteuid()
    group = os.getegid() if gid is None else gid
    mode &= 0o770  # never anything for others
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _check_ancestors(path.parent, uid, os.getegid())
    created = False
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)  # narrow until its group is right; never follows a symlink
        created = True
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise PermissionDenied(f"{path} is not a directory (a symlink?); refusing it") from None
        raise
    try:
        st = os.fstat(fd)
        if st.st_uid != uid:
            raise PermissionDenied(
                f"{path} belongs to uid {st.st_uid}, not to you (uid {uid}); refusing to use it"
            )
        old = stat.S_IMODE(st.st_mode)
        if st.st_gid != group:
            # Before widening anything to the group: the one we meant, not one inherited from a
            # set-group-id parent.
            os.fchmod(fd, old & 0o700)
            try:
                os.fchown(fd, -1, group)
            except PermissionError:
                raise PermissionDenied(
                    f"cannot give {path} to group {group}: you are not a member"
                ) from None
        new = (mode if created else old & mode) | 0o700
        os.fchmod(fd, new)
        # Every time, not only when the mode was wide: a run that refused a planted entry has
        # already narrowed the mode, and the next must refuse it too.
        _check_entries(fd, path, uid)
    finally:
        os.close(fd)
    return old if old != new and old & ~new else None
