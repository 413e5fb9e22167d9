"""An agent import checks both parts before any ref moves, and each part names the agent."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kiki_updater.agents import export_agent, import_agent
from kiki_updater.signing import SignatureRefused, generate_keypair
from kiki_updater.store import Store, app_ref
from kikitest.ostree_fixtures import in_worker, make_app_tree

pytestmark = pytest.mark.unit

AGENT = "org.example.agent"
SECRET, PUBLIC = generate_keypair()
OTHER_SECRET, _ = generate_keypair()


def _moved_once(tmp_path: Path) -> tuple[Path, Path, Store, Store, str]:
    code = make_app_tree(tmp_path / "code", AGENT, "1.0", files=10)
    state = tmp_path / "state"
    state.mkdir()
    (state / "a").write_text("v1")
    source, target = Store(tmp_path / "src"), Store(tmp_path / "dst")
    in_worker(export_agent, source, AGENT, code, state, tmp_path / "m1", secret=SECRET)
    first = in_worker(import_agent, target, AGENT, tmp_path / "m1", keys=(PUBLIC,))
    return code, state, source, target, first.commit


def test_a_refused_state_signature_moves_no_ref(tmp_path: Path) -> None:
    code, state, source, target, v1 = _moved_once(tmp_path)
    (code / "NEW").write_text("2")
    (state / "a").write_text("v2")
    good = in_worker(
        export_agent,
        source,
        AGENT,
        code,
        state,
        tmp_path / "good",
        secret=SECRET,
        full=True,
        destination="x",
    )
    bad = in_worker(
        export_agent,
        source,
        AGENT,
        code,
        state,
        tmp_path / "bad",
        secret=OTHER_SECRET,
        full=True,
        destination="y",
    )
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(good.files["code"], mixed / "code.delta")
    shutil.copy(bad.files["state"], mixed / "state.delta")
    state_before = target.resolve(app_ref("agent", AGENT, "state"))
    with pytest.raises(SignatureRefused):
        in_worker(import_agent, target, AGENT, mixed, keys=(PUBLIC,))
    found = target.deployed("agent", AGENT)
    assert found is not None
    assert found.commit == v1
    assert target.resolve(app_ref("agent", AGENT, "code")) == v1
    assert target.resolve(app_ref("agent", AGENT, "state")) == state_before


def test_another_agents_commits_are_refused(tmp_path: Path) -> None:
    other = "org.example.other"
    code = make_app_tree(tmp_path / "code", other, "1.0", files=5)
    state = tmp_path / "state"
    state.mkdir()
    in_worker(
        export_agent, Store(tmp_path / "src"), other, code, state, tmp_path / "m", secret=SECRET
    )
    target = Store(tmp_path / "dst")
    with pytest.raises(SignatureRefused, match=r"not org\.example\.agent"):
        in_worker(import_agent, target, AGENT, tmp_path / "m", keys=(PUBLIC,))
    assert target.deployed("agent", AGENT) is None
    assert target.resolve(app_ref("agent", AGENT, "code")) is None
