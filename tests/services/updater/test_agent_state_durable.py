"""An imported agent's state is durable before it takes ``data/``'s name, and the exchange is
durable before the import returns (and its journal entry is cleared): the tree is synced
(``syncfs``) before the ``renameat2`` exchange, the directory holding both after it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kiki_updater import agents
from kiki_updater.agents import export_agent, import_agent
from kiki_updater.signing import generate_keypair
from kiki_updater.store import Store
from kikitest.ostree_fixtures import in_worker, make_app_tree

pytestmark = pytest.mark.unit

AGENT = "org.example.agent"
SECRET, PUBLIC = generate_keypair()


def test_the_new_state_is_synced_before_the_exchange_and_the_exchange_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = make_app_tree(tmp_path / "code", AGENT, "1.0", files=3)
    state = tmp_path / "state"
    state.mkdir()
    (state / "a").write_text("v1")
    source, target = Store(tmp_path / "src"), Store(tmp_path / "dst")
    in_worker(export_agent, source, AGENT, code, state, tmp_path / "m1", secret=SECRET)
    in_worker(import_agent, target, AGENT, tmp_path / "m1", keys=(PUBLIC,))
    (state / "a").write_text("v2")
    in_worker(export_agent, source, AGENT, code, state, tmp_path / "m2", secret=SECRET)
    seen: list[tuple[str, str]] = []
    home = target.home("agent", AGENT)

    def spy(name: str, real: Any) -> Any:
        def call(*args: Any) -> Any:
            seen.append((name, Path(args[0]).name))
            return real(*args)

        return call

    for name in ("syncfs", "exchange", "fsync_dir"):
        monkeypatch.setattr(agents, name, spy(name, getattr(agents, name)))
    in_worker(import_agent, target, AGENT, tmp_path / "m2", keys=(PUBLIC,))
    assert (home / "data" / "a").read_text() == "v2"
    at = seen.index(("exchange", ".data-new"))
    assert ("syncfs", ".data-new") in seen[:at]
    assert ("fsync_dir", AGENT) in seen[at + 1 :]
