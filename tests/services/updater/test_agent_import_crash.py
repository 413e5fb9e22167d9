"""An agent's import killed (SIGKILL, by itself) as it enters each of its steps, then the
journal's recovery as a restarted updater runs it: the agent is then its old code and state or
its new code and state, whole, never one's code with the other's state, and the next import
goes through."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kiki_updater.agents import export_agent, import_journaled
from kiki_updater.journal import Journal, recover
from kiki_updater.operations import Operations
from kiki_updater.signing import generate_keypair
from kiki_updater.store import Store, app_ref
from kikitest.ostree_fixtures import assert_whole, in_worker, make_app_tree

pytestmark = pytest.mark.integration

AGENT = "org.example.agent"
SECRET, PUBLIC = generate_keypair()

CHILD = """
import os, signal, sys
from pathlib import Path
from kiki_updater.agents import import_journaled
from kiki_updater.gio import own_context
from kiki_updater.journal import Journal
from kiki_updater.operations import Operations
from kiki_updater.store import Store

root, agent, source, key, die_at = sys.argv[1:6]
store, journal = Store(Path(root)), Journal(Path(root))
ops = Operations(store, journal=journal)

def phase(name, info):
    if name == die_at:
        os.kill(os.getpid(), signal.SIGKILL)

def undo(ref, before, before_previous):
    ops.undo("agent", agent, ref, before, before_previous, action="undone")

with own_context():
    import_journaled(store, journal, agent, Path(source), keys=(key,), undo=undo, phase=phase)
"""


def _import(store: Store, journal: Journal, source: Path) -> str:
    ops = Operations(store, journal=journal)

    def undo(ref: str, before: str | None, before_previous: str | None) -> None:
        ops.undo("agent", AGENT, ref, before, before_previous, action="undone")

    done = in_worker(import_journaled, store, journal, AGENT, source, keys=(PUBLIC,), undo=undo)
    return done.commit


def _files(data: Path) -> dict[str, str]:
    return {str(p.relative_to(data)): p.read_text() for p in sorted(data.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("die_at", "ends_on"),
    [
        ("import", "old"),  # before the deltas are applied
        ("swap", "old"),  # both parts checked; before any ref or current moves
        ("state", "new"),  # the code deployed; before the state replaces data/
        ("done", "new"),  # the state in place; before the journal is removed
    ],
)
def test_an_import_killed_at_each_step_ends_whole(
    tmp_path: Path, die_at: str, ends_on: str
) -> None:
    code = make_app_tree(tmp_path / "code", AGENT, "1.0", files=8)
    state = tmp_path / "state"
    state.mkdir()
    (state / "a").write_text("v1")
    source = Store(tmp_path / "src")
    in_worker(export_agent, source, AGENT, code, state, tmp_path / "m1", secret=SECRET)
    root = tmp_path / "device"
    store, journal = Store(root), Journal(root)
    old_code = _import(store, journal, tmp_path / "m1")
    old_state = store.resolve(app_ref("agent", AGENT, "state"))
    old_files = _files(root / "agent" / AGENT / "data")
    (code / "NEW").write_text("2")
    (state / "a").write_text("v2")
    (state / "b").write_text("new")
    moved = in_worker(export_agent, source, AGENT, code, state, tmp_path / "m2", secret=SECRET)

    argv = [sys.executable, "-c", CHILD, str(root), AGENT, str(tmp_path / "m2"), PUBLIC, die_at]
    child = subprocess.run(argv, capture_output=True, timeout=120, check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    assert journal.pending() != []  # killed with its journal on disk

    said = in_worker(recover, store, journal)  # as the restarted updater does
    assert len(said) == 1, said
    assert journal.pending() == []
    if ends_on == "old":
        want_code, want_state, want_files = old_code, old_state, old_files
    else:
        want_code, want_state = moved.commits["code"], moved.commits["state"]
        want_files = {"a": "v2", "b": "new"}
    assert_whole(store, "agent", AGENT, want_code, tmp_path / "scratch")  # every file
    assert store.resolve(app_ref("agent", AGENT, "code")) == want_code
    assert store.resolve(app_ref("agent", AGENT, "state")) == want_state
    home = root / "agent" / AGENT
    assert _files(home / "data") == want_files
    assert not (home / ".data-new").exists()
    # the restarted updater takes the next import
    (state / "a").write_text("v3")
    in_worker(export_agent, source, AGENT, code, state, tmp_path / "m3", secret=SECRET, full=True)
    _import(store, journal, tmp_path / "m3")
    assert _files(home / "data") == {"a": "v3", "b": "new"}
