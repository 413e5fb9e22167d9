"""Installs from a directory (``kiki app install DIR``), the same way as from a remote: the
directory is published into the updater's own ``archive`` repository (``<root>/local``), signed
with this device's local key (``<root>/local.key``, made on first use, mode 0600), and the app
is installed or updated from the built-in remote ``local`` through every step of an install
(the commit fetched alone and its signature checked, the content pulled, checked, checked out,
the install step, the swap, the health check; journaled, rolled back on failure).

The updater runs as root: it reads a caller's directory only when the caller could (the
directory, not a symlink, owned by the caller's uid, or the caller is root or the updater), and
never one inside its own state.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from kiki_updater.publish import Release, publish
from kiki_updater.pull import Remote
from libkiki.errors import InvalidParams, PermissionDenied
from libkiki.peer import PeerCred

__all__ = ["LOCAL", "LocalBuilds", "check_directory"]

LOCAL = "local"  # the built-in remote of directory installs; no configured remote shadows it


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
        """This device's local signing key (secret, public), made on first use."""
        from kiki_updater.signing import generate_keypair, public_of

        try:
            secret = self.key_path.read_text().strip()
        except FileNotFoundError:
            secret, _ = generate_keypair()
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.key_path.with_name(".local.key.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secret + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.key_path)
        return secret, public_of(secret)

    def remote(self) -> Remote:
        _, public = self._keys()
        return Remote.of(LOCAL, str(self.repo_path), ed25519_keys=(public,))

    def build(self, directory: Path, channel: str) -> Release:
        """Publish ``directory`` as the next local release on ``channel``, signed."""
        from kiki_updater.signing import sign_commit

        secret, _ = self._keys()
        return publish(
            directory,
            self.repo_path,
            channel=channel,
            sign=lambda repo, commit: sign_commit(repo, commit, secret),
        )


def check_directory(where: object, peer: PeerCred | None, own_uid: int, state: Path) -> Path:
    """The app directory ``where`` names, if its caller may have the updater read it."""
    if not isinstance(where, str) or not where.startswith("/"):
        raise InvalidParams("directory: an absolute path")
    path = Path(where)
    try:
        info = path.lstat()
    except OSError as exc:
        raise InvalidParams(f"directory: {where}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise InvalidParams(f"directory: {where} is not a directory (nor may it be a symlink)")
    resolved = path.resolve()
    own = state.resolve()
    if resolved == own or own in resolved.parents:
        raise InvalidParams(f"directory: {where} is inside the updater's state ({own})")
    if peer is not None and peer.uid not in (0, own_uid) and info.st_uid != peer.uid:
        raise PermissionDenied(
            f"directory: {where} is not yours (uid {info.st_uid}): the updater reads it as root"
        )
    return path
