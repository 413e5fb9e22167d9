"""Pulls into the store's repository: from a static HTTP server or a local path.

Every pull is ``UNTRUSTED``: libostree then checks each object's checksum as it is written.
Over HTTP it does so anyway; from a ``file://`` path it would otherwise hardlink or copy the
objects as they are, and a tampered object would be accepted silently. A pull moves only the
remote-tracking ref (``<remote>:<ref>``); the deployed ref moves when the commit has been
verified and deployed (``operations.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiki_updater.gio import UpdaterError, lib, require_own_context
from libkiki.errors import InvalidParams, NotFound

__all__ = ["Progress", "PullFailed", "Remote", "ensure_remote", "pull", "snapshot"]


class PullFailed(UpdaterError):
    """The pull failed (network, disk, a corrupted object); the message says why."""


@dataclass(frozen=True, slots=True)
class Remote:
    """Where to pull from and which keys its commits must be signed with."""

    name: str
    url: str  # http(s)://… or file:///… (a local path is turned into that)
    ed25519_keys: tuple[str, ...] = ()  # base64 public keys (ostree's format)
    gpg_keyring: Path | None = None  # keyring file: gpg-verify and gpg-verify-summary on
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, name: str, where: str, **kw: Any) -> Remote:
        if where.startswith(("http://", "https://", "file:///")):
            return cls(name, where, **kw)
        if where.startswith("/"):
            return cls(name, Path(where).resolve().as_uri(), **kw)
        raise InvalidParams(f"{where!r} is neither an http(s) URL nor an absolute path")


@dataclass(frozen=True, slots=True)
class Progress:
    phase: str
    bytes: int
    objects: int
    objects_total: int


def snapshot(progress: Any, phase: str = "pull") -> Progress:
    """What an ``OstreeAsyncProgress`` says now (its getters take a lock: safe from any thread)."""
    transferred = progress.get_variant("bytes-transferred")
    return Progress(
        phase,
        int(transferred.unpack()) if transferred is not None else 0,
        int(progress.get_uint("fetched")),
        int(progress.get_uint("requested")),
    )


def ensure_remote(repo: Any, remote: Remote) -> None:
    """Add or replace the remote's configuration in the repository."""
    L = lib()
    GLib = L.GLib
    gpg = remote.gpg_keyring is not None
    options: dict[str, Any] = {
        "gpg-verify": GLib.Variant("b", gpg),
        "gpg-verify-summary": GLib.Variant("b", gpg),
    }
    for key, value in remote.extra.items():
        options[key] = GLib.Variant("s", value)
    if not gpg and _configured(repo, remote.name) == _written(remote.url, options):
        # As configured already (every update from the same remote): rewriting the
        # repository's config would cost two fdatasyncs for nothing.
        return
    change = L.OSTree.RepoRemoteChange
    repo.remote_change(None, change.DELETE_IF_EXISTS, remote.name, None, None, None)
    repo.remote_change(
        None, change.ADD, remote.name, remote.url, GLib.Variant("a{sv}", options), None
    )
    if gpg and remote.gpg_keyring is not None:
        fd = os.open(remote.gpg_keyring, os.O_RDONLY)
        try:
            stream = L.Gio.UnixInputStream.new(fd, False)
            repo.remote_gpg_import(remote.name, stream, None, None)
        finally:
            os.close(fd)


def _written(url: str, options: dict[str, Any]) -> dict[str, str]:
    """The keys libostree writes for a remote (``url`` and each option, a boolean as
    ``true``/``false``), as its config file then holds them."""
    out = {"url": url}
    for key, value in options.items():
        raw = value.unpack()
        out[key] = ("true" if raw else "false") if isinstance(raw, bool) else str(raw)
    return out


def _configured(repo: Any, name: str) -> dict[str, str] | None:
    """The remote's keys in the repository's config, or None without it."""
    config = repo.copy_config()
    group = f'remote "{name}"'
    if not config.has_group(group):
        return None
    keys, _ = config.get_keys(group)
    return {key: config.get_value(group, key) for key in keys}


def pull(
    repo: Any,
    remote: Remote,
    ref: str,
    *,
    progress: Any = None,
    commit_only: bool = False,
    commit: str | None = None,
    no_deltas: bool = False,
    cancellable: Any = None,
    sync: bool = True,
) -> str:
    """Pull ``ref`` from ``remote`` (its latest commit, no history) and return that commit.
    ``commit_only`` fetches the commit object and its detached metadata alone, so that its
    signature can be checked before any content is downloaded; ``commit`` pins the pull to
    that checksum (the one that was checked), whatever the remote's ref says meanwhile.
    libostree runs the pull's fetcher on this thread's default main context: it must be one of
    the thread's own (``gio.own_context``), never GLib's global one. ``sync`` false: without
    libostree's sync of the whole filesystem at its end (``syncfs(2)``, which waits for every
    other writer's data too); the caller makes what was pulled durable itself
    (``Store.sync_pulled``)."""
    require_own_context(f"the pull of {ref}")
    L = lib()
    GLib, OSTree = L.GLib, L.OSTree
    flags = OSTree.RepoPullFlags.UNTRUSTED
    if commit_only:
        flags |= OSTree.RepoPullFlags.COMMIT_ONLY
    options: dict[str, Any] = {
        "refs": GLib.Variant("as", [ref]),
        "flags": GLib.Variant("i", int(flags)),
        "depth": GLib.Variant("i", 0),
    }
    if commit is not None:
        options["override-commit-ids"] = GLib.Variant("as", [commit])
    if no_deltas:
        options["disable-static-deltas"] = GLib.Variant("b", True)
    synced = not repo.get_disable_fsync()
    if not sync:
        repo.set_disable_fsync(True)
    try:
        repo.pull_with_options(remote.name, GLib.Variant("a{sv}", options), progress, cancellable)
    except GLib.Error as exc:
        if (
            "not found" in exc.message.lower() or "No such branch" in exc.message
        ) and ref in exc.message:
            raise NotFound(f"{remote.name} has no {ref}") from None
        if "ref binding" in exc.message:
            # libostree's own check of ``ostree.ref-binding`` (see operations.bound)
            from kiki_updater.signing import SignatureRefused

            raise SignatureRefused(f"the commit served as {ref} is not bound to it") from None
        raise PullFailed(f"pull of {ref} from {remote.name} failed: {exc.message}") from None
    finally:
        repo.set_disable_fsync(not synced)
    _, pulled = repo.resolve_rev(f"{remote.name}:{ref}", False)
    return str(pulled)
