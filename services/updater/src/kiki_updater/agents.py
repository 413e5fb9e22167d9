"""Agents moved between devices as deltas: an agent's code and its state directory are two
commits (refs ``agent/<id>/<arch>/code`` and ``agent/<id>/<arch>/state``), and a move sends a
static delta file of each, from what was last sent to that destination (a full one the first
time), signed when a key is given.

On the destination the delta is applied offline, the commit's signature checked when keys are
given, the code deployed like an app's (hardlinked, ``current`` swapped) and the state checked
out as a copy into ``data/`` (writable: never the repository's objects), exchanged with the old
one atomically. :func:`import_journaled` journals each step: a crash before the state is being
put in place is undone at the next start, one after it is finished (:func:`finish_import`).
The source keeps its copy or retires it (:meth:`Store.remove`).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiki_updater.gio import (
    UpdaterError,
    commit_dir,
    commit_metadata,
    fsync_dir,
    lib,
    require_own_context,
    syncfs,
)
from kiki_updater.handover import copy_in, copy_out
from kiki_updater.journal import Entry, Journal
from kiki_updater.store import Deployed, Store, app_ref

__all__ = [
    "Moved",
    "export_agent",
    "finish_import",
    "import_agent",
    "import_journaled",
    "restore_state",
]

Phase = Callable[[str, dict[str, Any]], None]


def _quiet(name: str, info: dict[str, Any]) -> None:
    pass


PARTS = ("code", "state")


@dataclass(frozen=True, slots=True)
class Moved:
    agent: str
    commits: dict[str, str]
    files: dict[str, Path]
    bytes: int


def _sent_ref(agent: str, part: str, destination: str) -> str:
    return f"kiki/sent/{destination}/agent/{agent}/{part}"


def export_agent(
    store: Store,
    agent: str,
    code: Path,
    state: Path,
    out: Path | int,
    *,
    destination: str = "default",
    secret: str | None = None,
    full: bool = False,
    owner: tuple[int, int] | None = None,
) -> Moved:
    """Commit ``code`` and ``state`` as the agent's next commits and write, into the directory
    ``out`` (a path, or a caller's directory descriptor), a static delta of each from what
    ``destination`` was last sent (``full``: from nothing): mode 0600 (the state is the agent's
    private data), owned by ``owner`` (uid, gid) when given. Each delta is made in the
    updater's own state first, then copied in (:func:`~kiki_updater.handover.copy_out`: never
    through a symlink planted in ``out``)."""
    require_own_context(f"the export of agent {agent}")
    L = lib()
    repo = store.repo
    if isinstance(out, Path):
        out.mkdir(parents=True, exist_ok=True)
        out_fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    else:
        out_fd = os.dup(out)
    commits: dict[str, str] = {}
    files: dict[str, Path] = {}
    sizes = 0
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=store.root))
    try:
        for part, tree in zip(PARTS, (code, state), strict=True):
            ref = app_ref("agent", agent, part)
            _, parent = repo.resolve_rev(ref, True)
            commit = commit_dir(
                repo,
                tree,
                ref,
                subject=f"{agent} {part}",
                metadata={"kiki.id": agent},
                parent=parent or None,
            )
            if secret is not None:
                from kiki_updater.signing import sign_commit

                sign_commit(repo, commit, secret)
            sent = None if full else store.resolve(_sent_ref(agent, part, destination))
            made = work / f"{part}.delta"
            params = L.GLib.Variant(
                "a{sv}",
                {
                    "filename": L.GLib.Variant("ay", os.fsencode(made) + b"\0"),
                    "inline-parts": L.GLib.Variant("b", True),
                },
            )
            repo.static_delta_generate(
                L.OSTree.StaticDeltaGenerateOpt.MAJOR, sent, commit, None, params, None
            )
            copy_out(made, out_fd, made.name, owner)
            sizes += made.stat().st_size
            repo.set_ref_immediate(None, _sent_ref(agent, part, destination), commit, None)
            commits[part] = commit
            files[part] = out / made.name if isinstance(out, Path) else Path(made.name)
    finally:
        os.close(out_fd)
        shutil.rmtree(work, ignore_errors=True)
    return Moved(agent, commits, files, sizes)


def import_agent(
    store: Store,
    agent: str,
    source: Path | int,
    *,
    keys: tuple[str, ...] = (),
    phase: Phase = _quiet,
) -> Deployed:
    """Apply the deltas in ``source`` (written by :func:`export_agent`), check the commits'
    signatures when ``keys`` are given, deploy the code and put the state in ``data/``.

    ``phase(name, info)`` is told before each step, for the journal: ``swap`` (both parts
    applied and checked; the refs and ``current`` are about to move: info ``commit``, the code,
    and ``state``), ``state`` (the code is deployed; the state is about to replace ``data/``:
    from here an interrupted import is finished, never undone) and ``done``."""
    require_own_context(f"the import of agent {agent}")
    commits = _apply_and_check(store, agent, source, keys)
    phase("swap", {"commit": commits["code"], "state": commits["state"]})
    # Both parts applied and checked before any ref moves: a refused part moves nothing.
    for part in PARTS:
        store.repo.set_ref_immediate(None, app_ref("agent", agent, part), commits[part], None)
    deployed = store.deploy(
        "agent",
        agent,
        app_ref("agent", agent, "code"),
        commits["code"],
        remote=None,
        action="import",
    )
    phase("state", {"commit": commits["code"], "state": commits["state"]})
    restore_state(store, agent, commits["state"])
    phase("done", {"commit": commits["code"]})
    return deployed


def _apply_and_check(
    store: Store, agent: str, source: Path | int, keys: tuple[str, ...]
) -> dict[str, str]:
    """Apply both deltas, each from a copy in the updater's own state (a caller's file is read
    through the directory's descriptor: :func:`~kiki_updater.handover.copy_in`)."""
    L = lib()
    repo = store.repo
    commits: dict[str, str] = {}
    if isinstance(source, Path):
        source_fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    else:
        source_fd = os.dup(source)
    work = Path(tempfile.mkdtemp(prefix=".import-", dir=store.root))
    try:
        for part in PARTS:
            path = work / f"{part}.delta"
            copy_in(source_fd, path.name, path)
            repo.prepare_transaction(None)
            try:
                repo.static_delta_execute_offline(L.Gio.File.new_for_path(str(path)), False, None)
                repo.commit_transaction(None)
            except BaseException:
                repo.abort_transaction(None)
                raise
            commits[part] = _delta_target(path)
            if keys:
                from kiki_updater.signing import verify_commit

                verify_commit(repo, commits[part], keys)
            named = commit_metadata(repo, commits[part]).get("kiki.id")
            if named != agent:
                from kiki_updater.signing import SignatureRefused

                raise SignatureRefused(f"the {part} commit is {named!r}'s, not {agent}'s")
    finally:
        os.close(source_fd)
        shutil.rmtree(work, ignore_errors=True)
    return commits


def import_journaled(
    store: Store,
    journal: Journal,
    agent: str,
    source: Path | int,
    *,
    keys: tuple[str, ...],
    undo: Callable[[str, str | None, str | None], None],
    op: str = "",
    phase: Phase = _quiet,
) -> Deployed:
    """:func:`import_agent` with each step journaled first, so that a crash anywhere leaves
    the agent whole: before its state is put in place, the old code, state ref and ``data/``
    (a failure undoes it here, a crash at the next start); from then on, the new code and
    state (the next start finishes it: :func:`finish_import`). ``undo(ref, before,
    before_previous)`` puts the previous code back."""
    ref = app_ref("agent", agent, "code")
    entry = Entry(
        op,
        "agent",
        agent,
        "import",
        "import",
        ref,
        before=store.current("agent", agent),
        before_previous=store.previous("agent", agent),
        before_state=store.resolve(app_ref("agent", agent, "state")),
    )

    def step(name: str, info: dict[str, Any]) -> None:
        entry.phase = name
        entry.commit = info.get("commit", entry.commit)
        entry.state = info.get("state", entry.state)
        if name != "done":
            journal.write(entry)
        phase(name, info)

    step("import", {})
    try:
        done = import_agent(store, agent, source, keys=keys, phase=step)
    except BaseException:
        if entry.phase in ("swap", "state"):  # refs or current may have moved: put them back
            undo(ref, entry.before, entry.before_previous)
            put_state_ref_back(store, entry)
        journal.clear("agent", agent)
        raise
    journal.clear("agent", agent)
    return done


def put_state_ref_back(store: Store, entry: Entry) -> None:
    store.repo.set_ref_immediate(
        None, app_ref("agent", entry.ident, "state"), entry.before_state, None
    )


def finish_import(store: Store, entry: Entry) -> None:
    """Finish an import interrupted once its state was being put in place (journal phase
    ``state``): the code deployed and current, both refs on the imported commits, the state
    checked out again from its commit. Each step is idempotent."""
    if entry.commit is None or entry.state is None or entry.ref is None:
        raise UpdaterError(f"agent {entry.ident}: the journal lacks the imported commits")
    agent = entry.ident
    store.checkout("agent", agent, entry.commit)
    store.swap("agent", agent, entry.commit)
    store.set_refs("agent", agent, entry.ref, entry.commit, entry.before)
    store.repo.set_ref_immediate(None, app_ref("agent", agent, "state"), entry.state, None)
    restore_state(store, agent, entry.state)


def _delta_target(path: Path) -> str:
    """The commit a delta file leads to (its superblock's ``to`` checksum), read from the file
    mapped, not copied into memory."""
    L = lib()
    data = L.GLib.MappedFile.new(str(path), False).get_bytes()
    # A delta file is the superblock variant (with inline parts); the to-checksum is member 3.
    superblock = L.GLib.Variant.new_from_bytes(
        L.GLib.VariantType.new("(a{sv}tayay(a(ss)aya(sayay))aya(uayttay)a(yaytt))"), data, False
    )
    to: Any = superblock.get_child_value(3).unpack()
    return bytes(to).hex()


def restore_state(store: Store, agent: str, commit: str) -> None:
    """Replace the agent's ``data/`` with a copy of the state ``commit``: checked out beside it,
    then exchanged with it in one ``renameat2(RENAME_EXCHANGE)``, so that ``data/`` is the old
    state or the new one whole at every instant (never missing, never half of each)."""
    L = lib()
    home = store.home("agent", agent)
    fresh = home / ".data-new"
    shutil.rmtree(fresh, ignore_errors=True)
    options = L.OSTree.RepoCheckoutAtOptions()
    options.mode = 1
    options.force_copy = True  # writable state: copies, never the repository's objects
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    try:
        store.repo.checkout_at(options, fd, fresh.name, commit, None)
    finally:
        os.close(fd)
    if os.geteuid() == 0:  # the agent's own uid owns its state, as health.py runs it
        from kiki_updater.app_users import AppUsers

        chown_tree(fresh, AppUsers(store.root).uid("agent", agent))
    # The new state's files and owners durable before it takes data/'s name, and the exchange
    # durable before the caller clears the journal: else a power cut could leave new code
    # over an empty or old state with nothing left to finish the import.
    syncfs(fresh)
    data = home / "data"
    if data.exists():
        exchange(fresh, data)
    else:
        os.rename(fresh, data)
    fsync_dir(home)
    shutil.rmtree(fresh, ignore_errors=True)  # the old state, after the exchange


def chown_tree(top: Path, uid: int) -> None:
    """Give ``top`` and everything under it to ``uid`` (and its gid), through descriptors
    (``lchown``: a symlink itself, never what it points at; no directory entered through a
    symlink)."""
    pending = [os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)]
    while pending:
        fd = pending.pop()
        try:
            os.chown(fd, uid, uid)
            for name in os.listdir(fd):
                os.chown(name, uid, uid, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                    pending.append(os.open(name, flags, dir_fd=fd))
        finally:
            os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> None:
    """Swap the names ``a`` and ``b`` atomically (Linux ``renameat2`` ``RENAME_EXCHANGE``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    done = libc.renameat2(
        _AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), ctypes.c_uint(_RENAME_EXCHANGE)
    )
    if done != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"exchanging {a} and {b}: {os.strerror(errno)}")
