"""The operation journal: what a running operation is doing, on disk, so that a restart after a
crash (SIGKILL, power loss) finishes or undoes it.

One file per app or agent, ``<root>/journal/<kind>-<id>.json``, written (fsync'd, renamed into
place, directory fsync'd) as the operation enters each phase and removed when it ends. At start
:func:`recover` reads what is left:

* an install, update or import that had not passed its health check is undone: before the swap
  only its half-made checkout is removed (``current`` never moved); from the swap on, ``current``
  and the refs are put back to what they were (a first install is removed, ``data/`` kept);
* a rollback is finished: ``current`` and both refs end on its target;
* an agent's import interrupted once its state was being put in place is finished (the code
  deployed again if need be, the state checked out again from its commit); before that it is
  undone like an update, its state ref put back too.

Either way the app ends on one commit, whole: the old or the new one, never a mix.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from kiki_updater.gio import fsync_dir
from kiki_updater.store import Kind, Store

__all__ = ["Entry", "Journal", "recover"]

log = logging.getLogger(__name__)

# Phases after which an interrupted install/update has moved ``current``.
SWAPPED = {"swap", "health"}
# Phases of an agent's import past its point of no return: its code is deployed and its state
# is being put in place; recovery finishes it (the state checked out again from its commit).
IMPORT_FORWARD = {"state", "done"}


@dataclass
class Entry:
    op: str
    kind: Kind
    ident: str
    action: str  # install, update, import, rollback
    phase: str
    ref: str | None = None
    commit: str | None = None  # the commit being deployed (the target, for a rollback)
    before: str | None = None  # current when it began
    before_previous: str | None = None  # the rollback target when it began
    # an agent's import: the state commit being imported, and the state ref when it began
    state: str | None = None
    before_state: str | None = None


class Journal:
    def __init__(self, root: Path) -> None:
        self.dir = root / "journal"

    def path(self, kind: str, ident: str) -> Path:
        return self.dir / f"{kind}-{ident}.json"

    def write(self, entry: Entry) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.path(entry.kind, entry.ident)
        tmp = final.with_name(f".{final.name}.tmp")
        with tmp.open("wb") as f:
            f.write(orjson.dumps(asdict(entry)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(self.dir)

    def clear(self, kind: str, ident: str) -> None:
        try:
            self.path(kind, ident).unlink()
        except FileNotFoundError:
            return
        fsync_dir(self.dir)

    def pending(self) -> list[Entry]:
        if not self.dir.is_dir():
            return []
        found = []
        for path in sorted(self.dir.glob("*.json")):
            try:
                raw: dict[str, Any] = orjson.loads(path.read_bytes())
                found.append(Entry(**raw))
            except (OSError, orjson.JSONDecodeError, TypeError) as exc:
                # A journal written by a run killed mid-write is the .tmp, never this file;
                # one that does not parse is reported and left for a person.
                log.error("journal %s cannot be read (%s): left as it is", path, exc)
        return found


def recover(store: Store, journal: Journal) -> list[str]:
    """Finish or undo what the journal says was running; one line per operation, for the log
    and the service's status."""
    said = []
    for entry in journal.pending():
        try:
            said.append(_recover_one(store, entry))
        except Exception as exc:  # one app's trouble must not keep the updater from starting
            log.exception("recovering %s %s", entry.kind, entry.ident)
            said.append(f"{entry.kind} {entry.ident}: recovery failed ({exc}); journal kept")
            continue
        journal.clear(entry.kind, entry.ident)
    return said


def _recover_one(store: Store, entry: Entry) -> str:
    kind, ident = entry.kind, entry.ident
    home = store.home(kind, ident)
    what = f"{kind} {ident}: interrupted {entry.action} ({entry.phase})"
    if entry.action == "import" and entry.phase in IMPORT_FORWARD:
        from kiki_updater.agents import finish_import

        finish_import(store, entry)
        return f"{what} finished: on {str(entry.commit)[:12]}, its state restored"
    if entry.action == "rollback":
        if entry.commit and entry.ref:
            store.checkout(kind, ident, entry.commit)
            store.swap(kind, ident, entry.commit)
            store.set_refs(kind, ident, entry.ref, entry.commit, entry.before)
        return f"{what} finished: on {str(entry.commit)[:12]}"
    if entry.phase in SWAPPED:
        if entry.before is None:
            if entry.action == "import":
                from kiki_updater.agents import put_state_ref_back

                put_state_ref_back(store, entry)
            if home.exists():
                store.remove(kind, ident, keep_data=True)
            return f"{what} undone: removed"
        store.checkout(kind, ident, entry.before)
        store.swap(kind, ident, entry.before)
        if entry.ref:
            store.set_refs(kind, ident, entry.ref, entry.before, entry.before_previous)
        if entry.action == "import":
            from kiki_updater.agents import put_state_ref_back

            put_state_ref_back(store, entry)
        store.clean(kind, ident, keep={entry.before, entry.before_previous})
        origin = store.origin(kind, ident) or {}
        store.record(
            kind,
            ident,
            entry.ref or origin.get("ref", ""),
            entry.before,
            remote=origin.get("remote"),
            action="recovered",
        )
        return f"{what} undone: back on {entry.before[:12]}"
    deploy = home / "deploy"
    for leftover in (f".partial-{entry.commit}", entry.commit):
        if leftover and leftover not in (entry.before, entry.before_previous):
            shutil.rmtree(deploy / leftover, ignore_errors=True)
    if entry.before is None and store.current(kind, ident) is None and home.exists():
        for name in ("deploy", "origin.json"):
            shutil.rmtree(home / name, ignore_errors=True)
    return f"{what} undone: nothing had changed"
