"""``kiki app build``: an app directory checked, then published to an archive repository (the
updater's publishing code, run as its own process), signed when asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kikitest import kiki
from kikitest.ostree_fixtures import make_app_tree

pytestmark = pytest.mark.integration

APP = "org.example.player"


def test_build_publishes_releases_with_a_delta_and_signs_them(tmp_path: Path) -> None:
    from kiki_updater.gio import open_repo
    from kiki_updater.signing import generate_keypair, verify_commit

    secret, public = generate_keypair()
    (tmp_path / "key").write_text(secret)
    tree = make_app_tree(tmp_path / "app", APP, "1.0")
    repo = tmp_path / "published"
    first = kiki(
        "app", "build", str(tree), "--repo", str(repo), "--sign-key", str(tmp_path / "key")
    )
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"published {APP} 1.0 as ")
    assert "(first release)" in first.stdout
    (tree / "lib" / "m00" / "f00000.py").write_text("changed")
    second = kiki("app", "build", str(tree), "--repo", str(repo), "--json")
    release = json.loads(second.stdout)
    assert release["ok"] is True
    assert release["ref"].startswith(f"app/{APP}/")
    assert release["delta"] == f"{release['parent']}-{release['commit']}"
    assert verify_commit(open_repo(repo), release["parent"], (public,)) == public


def test_build_refuses_a_directory_that_does_not_check(tmp_path: Path) -> None:
    tree = make_app_tree(tmp_path / "app", APP, "1.0")
    (tree / "kiki-app.json").write_text('{"id": "org.example.player", "tools": ["x.y.nope"]}')
    run = kiki("app", "build", str(tree), "--repo", str(tmp_path / "published"), "--json")
    assert run.returncode == 1
    assert json.loads(run.stdout)["ok"] is False
    assert not (tmp_path / "published").exists()
