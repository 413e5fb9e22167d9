"""An agent import that fails once its code is deployed puts the previous code back."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from kiki_updater import agents
from kiki_updater.agents import export_agent
from kiki_updater.config import UpdaterConfig
from kiki_updater.os_updates import AgentMoves
from kiki_updater.signing import generate_keypair
from kiki_updater.store import Store
from kiki_updater.updater import Updater
from kikitest.ostree_fixtures import in_worker, make_app_tree

pytestmark = pytest.mark.unit

AGENT = "org.example.agent"
SECRET, PUBLIC = generate_keypair()


def _import(moves: AgentMoves, source: Path) -> Any:
    fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return asyncio.run(moves.import_(None, {"appId": AGENT, "source": str(source)}, None, fd))
    finally:
        os.close(fd)


def test_a_state_that_cannot_be_restored_puts_the_previous_code_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = make_app_tree(tmp_path / "code", AGENT, "1.0", files=5)
    state = tmp_path / "state"
    state.mkdir()
    (state / "a").write_text("v1")
    source = Store(tmp_path / "src")
    in_worker(export_agent, source, AGENT, code, state, tmp_path / "m1", secret=SECRET)
    config = UpdaterConfig.model_validate(
        {"root": str(tmp_path / "device"), "broker_tools": False, "agent_keys": [PUBLIC]}
    )
    updater = Updater(config)
    moves = AgentMoves(updater)
    first = _import(moves, tmp_path / "m1")
    assert first.state == "succeeded", first
    v1 = updater.store.current("agent", AGENT)
    (code / "NEW").write_text("2")
    (state / "a").write_text("v2")
    in_worker(export_agent, source, AGENT, code, state, tmp_path / "m2", secret=SECRET)

    def full(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(agents, "restore_state", full)
    with pytest.raises(OSError, match="No space"):
        _import(moves, tmp_path / "m2")
    assert updater.store.current("agent", AGENT) == v1
    assert (updater.store.home("agent", AGENT) / "data" / "a").read_text() == "v1"
    assert updater.journal.pending() == []
