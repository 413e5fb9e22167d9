"""The install step of an OSTree install: the new checkout's manifest checked against the
published lexicons (Kiki's and installed apps'), its lexicons and bindings installed; an update
whose lexicon breaks the type the installed version published is refused before the swap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiki_updater.operations import Operations
from kiki_updater.publish import publish
from kiki_updater.pull import Remote
from kiki_updater.signing import generate_keypair, sign_commit
from kiki_updater.store import Store
from kiki_updater.updater import install_lexicons
from kikitest.ostree_fixtures import in_worker, make_app_tree, write_manifest
from libkiki.errors import KikiError

pytestmark = pytest.mark.unit

APP = "org.example.player"
SECRET, PUBLIC = generate_keypair()


def release(repo: Path, tree: Path, version: str, query: dict[str, object]) -> str:
    lexdir = tree / "lexicons" / "org" / "example" / "player"
    lexdir.mkdir(parents=True, exist_ok=True)
    doc = {"lexicon": 1, "id": f"{APP}.search", "defs": {"main": {"type": "query", **query}}}
    (lexdir / "search.json").write_text(json.dumps(doc))
    write_manifest(tree, APP, version, tools=[f"{APP}.search"])
    return publish(tree, repo, sign=lambda r, c: sign_commit(r, c, SECRET)).commit


def test_an_update_that_breaks_a_published_type_is_refused_before_the_swap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    monkeypatch.setenv("KIKI_STATE_DIR", str(state))
    monkeypatch.delenv("KIKI_LEXICON_PATH", raising=False)
    repo, tree = tmp_path / "published", make_app_tree(tmp_path / "tree", APP, "1.0")
    optional = {"type": "params", "properties": {"q": {"type": "string", "maxGraphemes": 100}}}
    first = release(repo, tree, "1.0", {"parameters": optional})
    updater = Operations(Store(tmp_path / "device"), install_step=install_lexicons)
    remote = Remote.of("local", str(repo), ed25519_keys=(PUBLIC,))
    assert in_worker(updater.install, "app", APP, remote).commit == first
    assert (state / "lexicons" / "org" / "example" / "player" / "search.json").is_file()
    assert list((state / "bindings").rglob("*.py"))  # bindings generated
    required = {**optional, "required": ["q"]}  # an old caller without q would now fail
    release(repo, tree, "2.0", {"parameters": required})
    with pytest.raises(KikiError, match="required"):
        in_worker(updater.install, "app", APP, remote, update=True)
    found = updater.store.deployed("app", APP)
    assert found is not None
    assert (found.commit, found.version) == (first, "1.0")
