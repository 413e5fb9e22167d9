"""Installs from a directory (``kiki app install DIR``), the same way as from a remote: the
directory is published into the updater's own ``archive`` repository (``<root>/local``), signed
with this device's local key (``<root>/local.key``, mode 0600), and the app is installed or
updated from the built-in remote ``local`` through every step of an install (the commit fetched
alone and its signature checked, the content pulled, checked, checked out, the install step, the
swap, the health check; journaled, rolled back on failure).

The updater runs as root, in namespaces of its own (``ProtectHome=``, ``PrivateTmp=``), so it
never opens the caller's directory by its path: the caller opens it (as itself) and passes the
descriptor on ``updater.sock`` (``server.py``). The updater takes it only when it is a directory
owned by the caller's uid (the connection's peer credentials; or the caller is root or the
updater) and reads it through the descriptor alone (:func:`stage`): every entry relative to its
directory's descriptor, never following a symlink, regular files opened without blocking and
checked after opening, at most :data:`MAX_FILES` entries and :data:`MAX_BYTES` bytes, into a
staging copy of its own that it then commits.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kiki_updater.publish import MANIFEST_FILE, Release, publish
from kiki_updater.pull import Remote
from libkiki.errors import InvalidParams, LimitExceeded

__all__ = ["LOCAL", "MAX_BYTES", "MAX_DEPTH", "MAX_FILES", "LocalBuilds", "stage"]

LOCAL = "local"  # the built-in remote of directory installs; no configured remote shadows it
MAX_FILES = 50_000  # entries of every kind
MAX_BYTES = 1 << 30  # the regular files' bytes together
MAX_DEPTH = 64
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class LocalBuilds:
    root: Path

    @property
    def repo_path(self) -> Path:
        return self.root / "local"

    @property
    def key_path(self) -> Path:
        return self.root / "local.key"

    def _keys(self) -> tuple[str, str]:
        """This device's local signing key (secret, public), made once: the first caller makes
        it under a lock (threads and processes), with ``O_EXCL``, before anyone reads it."""
        from kiki_updater.gio import fsync_dir
        from kiki_updater.signing import generate_keypair, public_of

        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".local.key.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                secret = self.key_path.read_text().strip()
            except FileNotFoundError:
                secret, _ = generate_keypair()
                tmp = self.key_path.with_name(".local.key.tmp")
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()  # a killed run's
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(secret + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.key_path)
                fsync_dir(self.root)
        return secret, public_of(secret)

    def remote(self) -> Remote:
        _, public = self._keys()
        return Remote.of(LOCAL, str(self.repo_path), ed25519_keys=(public,))

    def prune(self) -> None:
        """Free every local release but the newest of each ref (the parent the next build's
        delta starts from; the device's own store keeps its rollback targets), with their
        static deltas, and list what is left in the summary."""
        from kiki_updater.gio import lib, open_repo
        from kiki_updater.publish import regenerate_summary

        if not self.repo_path.exists():
            return
        L = lib()
        repo = open_repo(self.repo_path, "archive")
        repo.prune(L.OSTree.RepoPruneFlags.REFS_ONLY, 0, None)
        regenerate_summary(repo)

    def forget(self, ref: str) -> None:
        """Drop ``ref`` (a removed app's) from the local archive, and what only it kept."""
        from kiki_updater.gio import open_repo

        if not self.repo_path.exists():
            return
        repo = open_repo(self.repo_path, "archive")
        _, head = repo.resolve_rev(ref, True)
        if head:
            repo.set_ref_immediate(None, ref, None, None)
        self.prune()

    def build(
        self,
        dirfd: int,
        channel: str,
        app_id: str | None = None,
        *,
        staged: Callable[[], None] | None = None,
    ) -> Release:
        """Publish the directory open at ``dirfd`` as the next local release on ``channel``,
        signed, from a staging copy (:func:`stage`); with ``app_id``, only if its manifest
        names that app (nothing is committed otherwise). ``staged`` is called once the copy
        is made, before the commit (the operation's phase moves from copy to build)."""
        from kiki_updater.publish import read_manifest
        from kiki_updater.signing import sign_commit

        secret, _ = self._keys()
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        try:
            stage(dirfd, staging)
            if staged is not None:
                staged()
            named = read_manifest(staging)["id"]
            if app_id is not None and named != app_id:
                raise InvalidParams(f"directory: its {MANIFEST_FILE} is {named}'s, not {app_id}'s")
            return publish(
                staging,
                self.repo_path,
                channel=channel,
                sign=lambda repo, commit: sign_commit(repo, commit, secret),
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def stage(dirfd: int, into: Path) -> None:
    """Copy the tree open at ``dirfd`` into the empty directory ``into``: directories, regular
    files (mode 0755 when the owner may execute, else 0644) and symlinks (as symlinks, never
    followed); any other kind of entry, a manifest that is not a regular file, more than
    :data:`MAX_FILES` entries or :data:`MAX_BYTES` bytes are refused."""
    try:
        top = os.stat(MANIFEST_FILE, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        top = None
    if top is None or not stat.S_ISREG(top.st_mode):
        raise InvalidParams(f"directory: its {MANIFEST_FILE} must be a regular file")
    out = os.open(into, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _copy(os.dup(dirfd), out, [0, 0], 0)
    finally:
        os.close(out)


def _copy(src: int, dst: int, seen: list[int], depth: int) -> None:
    """``seen`` is [entries, bytes] so far; ``src`` is closed here."""
    try:
        if depth > MAX_DEPTH:
            raise LimitExceeded(f"directory: nested deeper than {MAX_DEPTH}")
        for name in os.listdir(src):
            seen[0] += 1
            if seen[0] > MAX_FILES:
                raise LimitExceeded(f"directory: more than {MAX_FILES} entries")
            info = os.stat(name, dir_fd=src, follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
            elif stat.S_ISDIR(info.st_mode):
                sub = _open(name, src, os.O_DIRECTORY, stat.S_ISDIR)
                os.mkdir(name, 0o755, dir_fd=dst)
                out = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dst)
                try:
                    _copy(sub, out, seen, depth + 1)
                finally:
                    os.close(out)
            elif stat.S_ISREG(info.st_mode):
                _copy_file(name, src, dst, seen)
            else:
                raise InvalidParams(
                    f"directory: {name} is neither a file, a directory nor a symlink"
                )
    finally:
        os.close(src)


def _open(name: str, src: int, flags: int, is_kind: Callable[[int], bool]) -> int:
    """``name`` opened without following a symlink or blocking (a FIFO swapped in after the
    ``stat``), and checked to be of the kind the ``stat`` saw."""
    fd = os.open(
        name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | flags, dir_fd=src
    )
    mode = os.fstat(fd).st_mode
    if not is_kind(mode):
        os.close(fd)
        raise InvalidParams(f"directory: {name} changed while it was read")
    return fd


def _copy_file(name: str, src: int, dst: int, seen: list[int]) -> None:
    fd = _open(name, src, 0, stat.S_ISREG)
    try:
        mode = 0o755 if os.fstat(fd).st_mode & stat.S_IXUSR else 0o644
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode, dir_fd=dst)
        with open(out, "wb") as f:
            while chunk := os.read(fd, _CHUNK):
                seen[1] += len(chunk)
                if seen[1] > MAX_BYTES:
                    raise LimitExceeded(f"directory: more than {MAX_BYTES >> 20} MiB")
                f.write(chunk)
    finally:
        os.close(fd)
