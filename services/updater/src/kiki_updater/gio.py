"""libostree through GObject introspection, loaded on first use.

``gi`` and the OSTree typelib cost about 200 ms to import: nothing on a path that does not touch
a repository (``kiki --help``, the service's start, its health answer) may import them, so every
module reaches them through :func:`lib` and holds the result as ``Any`` (PyGObject ships no
types for the introspected API).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from libkiki.errors import KikiError

T = TypeVar("T")

__all__ = [
    "Lib",
    "NoOwnContext",
    "UpdaterError",
    "commit_dir",
    "commit_metadata",
    "commit_version",
    "fsync_dir",
    "in_own_context",
    "lib",
    "open_repo",
    "own_context",
    "require_own_context",
    "variant_dict",
]


class UpdaterError(KikiError):
    """An OSTree operation failed; the message says which and libostree's reason."""


class NoOwnContext(UpdaterError):
    """An operation was called on a thread whose default GLib main context is GLib's global
    one: it must run as the server runs it, in a worker inside :func:`own_context`."""


@dataclass(frozen=True, slots=True)
class Lib:
    OSTree: Any
    Gio: Any
    GLib: Any


@functools.cache
def lib() -> Lib:
    gi = importlib.import_module("gi")
    gi.require_version("OSTree", "1.0")
    return Lib(
        importlib.import_module("gi.repository.OSTree"),
        importlib.import_module("gi.repository.Gio"),
        importlib.import_module("gi.repository.GLib"),
    )


def open_repo(path: Path, mode: str | None = None) -> Any:
    """Open the repository at ``path``; with ``mode`` (``bare-user-only``, ``archive``) create
    it first when it does not exist."""
    L = lib()
    repo = L.OSTree.Repo.new(L.Gio.File.new_for_path(str(path)))
    if mode is not None and not (path / "config").exists():
        path.mkdir(parents=True, exist_ok=True)
        modes = {
            "bare-user-only": L.OSTree.RepoMode.BARE_USER_ONLY,
            "archive": L.OSTree.RepoMode.ARCHIVE,
        }
        repo.create(modes[mode], None)
    repo.open(None)
    return repo


def variant_dict(metadata: dict[str, Any]) -> Any:
    """``a{sv}`` from plain values: str -> s, bool -> b, int -> t, bytes -> ay,
    list of str -> as."""
    GLib = lib().GLib
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if isinstance(value, bool):
            out[key] = GLib.Variant("b", value)
        elif isinstance(value, int):
            out[key] = GLib.Variant("t", value)
        elif isinstance(value, bytes):
            out[key] = GLib.Variant("ay", value)
        elif isinstance(value, list | tuple):
            out[key] = GLib.Variant("as", [str(item) for item in value])
        else:
            out[key] = GLib.Variant("s", str(value))
    return GLib.Variant("a{sv}", out)


def commit_dir(
    repo: Any,
    tree: Path,
    ref: str,
    *,
    subject: str,
    metadata: dict[str, Any],
    parent: str | None = None,
    timestamp: int | None = None,
) -> str:
    """Commit the directory ``tree`` with ``metadata`` and point ``ref`` at it, in one
    transaction; the commit's checksum. File modes are made canonical (no owners, no setuid)
    so that any user's checkout of it is the same tree."""
    L = lib()
    repo.prepare_transaction(None)
    try:
        mtree = L.OSTree.MutableTree.new()
        modifier = L.OSTree.RepoCommitModifier.new(
            L.OSTree.RepoCommitModifierFlags.CANONICAL_PERMISSIONS, None
        )
        repo.write_directory_to_mtree(L.Gio.File.new_for_path(str(tree)), mtree, modifier, None)
        _, root = repo.write_mtree(mtree, None)
        meta = variant_dict(metadata)
        if timestamp is None:
            _, checksum = repo.write_commit(parent, subject, "", meta, root, None)
        else:
            _, checksum = repo.write_commit_with_time(
                parent, subject, "", meta, root, timestamp, None
            )
        repo.transaction_set_ref(None, ref, checksum)
        repo.commit_transaction(None)
    except BaseException:
        repo.abort_transaction(None)
        raise
    return str(checksum)


def commit_metadata(repo: Any, checksum: str) -> dict[str, Any]:
    """The commit's metadata as plain values, with its ``parent`` and ``timestamp``."""
    L = lib()
    _, commit, _ = repo.load_commit(checksum)
    meta: dict[str, Any] = dict(commit.get_child_value(0).unpack())
    meta["parent"] = L.OSTree.commit_get_parent(commit)
    meta["timestamp"] = int(L.OSTree.commit_get_timestamp(commit))
    meta["subject"] = commit.get_child_value(3).unpack()
    return meta


def commit_version(repo: Any, checksum: str) -> str:
    """The commit's ``version`` alone: one lookup, not the whole metadata unpacked (it holds
    the manifest)."""
    _, commit, _ = repo.load_commit(checksum)
    found = commit.get_child_value(0).lookup_value("version", None)
    return str(found.unpack()) if found is not None else ""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def syncfs(path: Path) -> None:
    """Make everything written on ``path``'s filesystem durable (``syncfs(2)``): a tree of many
    files written without an fsync each, in one call."""
    import ctypes

    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"syncfs {path}: {os.strerror(errno)}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def own_context() -> Iterator[Any]:
    """Give this thread a GLib main context of its own for the block: what libostree attaches
    while it works (a pull's fetcher and timeouts, a progress's idle sources) goes there, and
    is drained and dropped with it at the end. Without it they go to GLib's global context,
    shared by every thread of the process and iterated by every pull made without one: a
    source left there by one operation is dispatched in the next, on whatever thread runs it
    (a pull made so on pytest's main thread aborted the whole process once)."""
    context = lib().GLib.MainContext.new()
    context.push_thread_default()
    try:
        yield context
    finally:
        while context.iteration(False):
            pass
        context.pop_thread_default()


def require_own_context(what: str) -> None:
    """Refuse to run ``what`` on a thread without a main context of its own
    (:func:`own_context`): the mistake would otherwise show as a rare crash of the process."""
    GLib = lib().GLib
    context = GLib.MainContext.get_thread_default()
    if context is None or context == GLib.MainContext.default():
        raise NoOwnContext(
            f"{what} needs a GLib main context of its own: run it in a worker inside "
            "kiki_updater.gio.own_context(), as the server does (in_own_context)"
        )


def in_own_context(
    work: Callable[[Any, Any, Any], T],
    op: Any,
    phase: Any,
    holder: list[Any],
    with_progress: bool,
) -> T:
    """Run ``work`` in this worker thread with a GLib main context of its own
    (:func:`own_context`), and the pull's ``OstreeAsyncProgress`` made here, in it. libostree
    attaches the progress's idle sources to the context that was the thread's default when it
    was made: made on the event loop's thread, they went to GLib's global context, which
    nobody runs, and an operation after the first could crash or hang on a freed progress. Its
    getters take a lock: the event loop reads it (``holder[0]``) while the pull runs; the
    context is drained before it is dropped. ``with_progress`` false (the OS, through bootc):
    no libostree, so neither."""
    if not with_progress:
        return work(op, None, phase)
    with own_context():
        progress = lib().OSTree.AsyncProgress.new()
        holder.append(progress)
        try:
            return work(op, progress, phase)
        finally:
            # The progress outlives the drain (this frame holds it) and is finished first:
            # finish() destroys its pending idle source, which libostree's finalize only
            # unrefs. Dropped before the drain, as it once was, the drain dispatched that
            # source with the progress freed (GLib's "invalid non-instantiatable type"
            # warning, or a crash).
            progress.finish()
            holder.clear()
