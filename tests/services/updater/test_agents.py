"""Agents moved between two repositories as static delta files: code and state as commits,
the second move only what changed, the state writable (copies, not the repository's objects),
signatures checked on arrival."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kiki_updater.agents import export_agent, import_agent
from kiki_updater.signing import SignatureRefused, generate_keypair
from kiki_updater.store import Store
from kikitest.ostree_fixtures import in_worker, make_app_tree

pytestmark = pytest.mark.unit

AGENT = "org.example.agent"
SECRET, PUBLIC = generate_keypair()
_, OTHER = generate_keypair()


def test_a_move_sends_deltas_and_lands_whole(tmp_path: Path) -> None:
    code = make_app_tree(tmp_path / "code", AGENT, "1.0", files=100)
    state = tmp_path / "state"
    (state / "memory").mkdir(parents=True)
    for i in range(100):
        (state / "memory" / f"n{i}.json").write_text(os.urandom(400).hex())
    source, target = Store(tmp_path / "src"), Store(tmp_path / "dst")
    first = in_worker(export_agent, source, AGENT, code, state, tmp_path / "m1", secret=SECRET)
    landed = in_worker(import_agent, target, AGENT, tmp_path / "m1", keys=(PUBLIC,))
    assert landed.commit == first.commits["code"]
    data = target.home("agent", AGENT) / "data"
    assert (data / "memory" / "n5.json").read_text() == (state / "memory" / "n5.json").read_text()
    assert (data / "memory" / "n5.json").stat().st_nlink == 1  # a copy: writable state
    (state / "memory" / "n5.json").write_text("changed")
    second = in_worker(export_agent, source, AGENT, code, state, tmp_path / "m2", secret=SECRET)
    assert second.bytes < first.bytes / 5
    in_worker(import_agent, target, AGENT, tmp_path / "m2", keys=(PUBLIC,))
    assert (data / "memory" / "n5.json").read_text() == "changed"
    assert target.deployed("agent", AGENT).commit == second.commits["code"]  # type: ignore[union-attr]


def test_a_move_signed_by_an_unknown_key_is_refused(tmp_path: Path) -> None:
    code = make_app_tree(tmp_path / "code", AGENT, "1.0", files=10)
    state = tmp_path / "state"
    state.mkdir()
    (state / "a").write_text("a")
    in_worker(
        export_agent, Store(tmp_path / "src"), AGENT, code, state, tmp_path / "m", secret=SECRET
    )
    target = Store(tmp_path / "dst")
    with pytest.raises(SignatureRefused):
        in_worker(import_agent, target, AGENT, tmp_path / "m", keys=(OTHER,))
    assert target.deployed("agent", AGENT) is None
