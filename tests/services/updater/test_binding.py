"""A signed commit is deployed only under the ref, app and kind it was published for."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiki_updater.gio import commit_dir, open_repo
from kiki_updater.operations import Operations
from kiki_updater.publish import publish, regenerate_summary
from kiki_updater.pull import Remote
from kiki_updater.signing import SignatureRefused, generate_keypair, sign_commit
from kiki_updater.store import Store
from kikitest.ostree_fixtures import in_worker, make_app_tree, write_manifest

pytestmark = pytest.mark.unit

APP = "org.example.player"
SECRET, PUBLIC = generate_keypair()


def _sign(repo: object, commit: str) -> None:
    sign_commit(repo, commit, SECRET)


def _serve(published: Path, ref: str, commit: str) -> None:
    repo = open_repo(published)
    repo.set_ref_immediate(None, ref, commit, None)
    regenerate_summary(repo)


def test_a_beta_commit_served_as_stable_is_refused(tmp_path: Path) -> None:
    published = tmp_path / "published"
    tree = make_app_tree(tmp_path / "tree", APP, "1.0")
    stable = publish(tree, published, sign=_sign)
    write_manifest(tree, APP, "2.0-beta")
    beta = publish(tree, published, channel="beta", sign=_sign)
    ops = Operations(Store(tmp_path / "device"))
    remote = Remote.of("local", str(published), ed25519_keys=(PUBLIC,))
    in_worker(ops.install, "app", APP, remote)
    _serve(published, stable.ref, beta.commit)
    with pytest.raises(SignatureRefused, match="not bound"):
        in_worker(ops.install, "app", APP, remote, update=True)
    found = ops.store.deployed("app", APP)
    assert found is not None
    assert found.commit == stable.commit


@pytest.mark.parametrize(
    "metadata",
    [
        {"version": "1.0", "kiki.kind": "app"},
        {"version": "1.0", "kiki.id": "org.example.other", "kiki.kind": "app"},
        {"version": "1.0", "kiki.id": APP, "kiki.kind": "agent"},
        {"version": "1.0", "kiki.id": APP},
    ],
)
def test_a_commit_without_the_apps_id_and_kind_is_refused(
    tmp_path: Path, metadata: dict[str, object]
) -> None:
    published = tmp_path / "published"
    tree = make_app_tree(tmp_path / "tree", APP, "1.0")
    ref = publish(tree, published, sign=_sign).ref
    repo = open_repo(published)
    commit = commit_dir(
        repo, tree, ref, subject="s", metadata={**metadata, "ostree.ref-binding": [ref]}
    )
    _sign(repo, commit)
    regenerate_summary(repo)
    ops = Operations(Store(tmp_path / "device"))
    with pytest.raises(SignatureRefused, match=r"not app org\.example\.player"):
        in_worker(
            ops.install, "app", APP, Remote.of("local", str(published), ed25519_keys=(PUBLIC,))
        )
    assert ops.store.deployed("app", APP) is None
