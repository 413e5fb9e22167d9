"""Agents moved between devices as deltas: an agent's code and its state directory are two
commits (refs ``agent/<id>/<arch>/code`` and ``agent/<id>/<arch>/state``), and a move sends a
static delta file of each, from what was last sent to that destination (a full one the first
time), signed when a key is given.

On the destination the delta is applied offline, the commit's signature checked when keys are
given, the code deployed like an app's (hardlinked, ``current`` swapped) and the state checked
out as a copy into ``data/`` (writable: never the repository's objects), swapped in by rename.
The source keeps its copy or retires it (:meth:`Store.remove`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiki_updater.gio import commit_dir, commit_metadata, fsync_dir, lib, require_own_context
from kiki_updater.store import Deployed, Store, app_ref

__all__ = ["Moved", "export_agent", "import_agent"]

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
    out: Path,
    *,
    destination: str = "default",
    secret: str | None = None,
    full: bool = False,
) -> Moved:
    """Commit ``code`` and ``state`` as the agent's next commits and write, into the directory
    ``out``, a static delta of each from what ``destination`` was last sent (``full``: from
    nothing)."""
    require_own_context(f"the export of agent {agent}")
    L = lib()
    repo = store.repo
    out.mkdir(parents=True, exist_ok=True)
    commits: dict[str, str] = {}
    files: dict[str, Path] = {}
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
        path = out / f"{part}.delta"
        params = L.GLib.Variant(
            "a{sv}",
            {
                "filename": L.GLib.Variant("ay", os.fsencode(path) + b"\0"),
                "inline-parts": L.GLib.Variant("b", True),
            },
        )
        repo.static_delta_generate(
            L.OSTree.StaticDeltaGenerateOpt.MAJOR, sent, commit, None, params, None
        )
        repo.set_ref_immediate(None, _sent_ref(agent, part, destination), commit, None)
        commits[part], files[part] = commit, path
    return Moved(agent, commits, files, sum(p.stat().st_size for p in files.values()))


def import_agent(store: Store, agent: str, source: Path, *, keys: tuple[str, ...] = ()) -> Deployed:
    """Apply the deltas in ``source`` (written by :func:`export_agent`), check the commits'
    signatures when ``keys`` are given, deploy the code and put the state in ``data/``."""
    require_own_context(f"the import of agent {agent}")
    L = lib()
    repo = store.repo
    commits: dict[str, str] = {}
    for part in PARTS:
        path = source / f"{part}.delta"
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
    # Both parts applied and checked before any ref moves: a refused part moves nothing.
    for part in PARTS:
        repo.set_ref_immediate(None, app_ref("agent", agent, part), commits[part], None)
    deployed = store.deploy(
        "agent",
        agent,
        app_ref("agent", agent, "code"),
        commits["code"],
        remote=None,
        action="import",
    )
    _restore_state(store, agent, commits["state"])
    return deployed


def _delta_target(path: Path) -> str:
    """The commit a delta file leads to (its superblock's ``to`` checksum)."""
    L = lib()
    data = L.GLib.Bytes.new(path.read_bytes())
    # A delta file is the superblock variant (with inline parts); the to-checksum is member 3.
    superblock = L.GLib.Variant.new_from_bytes(
        L.GLib.VariantType.new("(a{sv}tayay(a(ss)aya(sayay))aya(uayttay)a(yaytt))"), data, False
    )
    to: Any = superblock.get_child_value(3).unpack()
    return bytes(to).hex()


def _restore_state(store: Store, agent: str, commit: str) -> None:
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
    old = home / ".data-old"
    shutil.rmtree(old, ignore_errors=True)
    if (home / "data").exists():
        os.rename(home / "data", old)
    os.rename(fresh, home / "data")
    fsync_dir(home)
    shutil.rmtree(old, ignore_errors=True)
