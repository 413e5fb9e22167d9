"""An older release, still validly signed, served as the ref's latest is not an update."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiki_updater.gio import open_repo
from kiki_updater.operations import Downgrade, Operations
from kiki_updater.pull import Remote
from kiki_updater.signing import generate_keypair
from kiki_updater.store import Store
from kikitest.ostree_fixtures import in_worker, publish_versions

pytestmark = pytest.mark.unit

APP = "org.example.player"
SECRET, PUBLIC = generate_keypair()


def test_replayed_older_signed_commit_is_refused_before_its_content(tmp_path: Path) -> None:
    published = tmp_path / "published"
    old, new = publish_versions(published, tmp_path, APP, ["1.0", "1.1"], secret=SECRET)
    ops = Operations(Store(tmp_path / "device"))
    remote = Remote.of("local", str(published), ed25519_keys=(PUBLIC,))
    in_worker(ops.install, "app", APP, remote)
    # a mirror (or anyone on an http:// remote's path) serves the older, signed, release
    repo = open_repo(published)
    repo.set_ref_immediate(None, old.ref, old.commit, None)
    repo.regenerate_summary(None, None)
    with pytest.raises(Downgrade) as refused:
        in_worker(ops.install, "app", APP, remote, update=True)
    assert refused.value.data == {"error": "Downgrade"}
    found = ops.store.deployed("app", APP)
    assert found is not None
    assert found.commit == new.commit
    _, ours = ops.store.repo.resolve_rev(new.ref, False)
    assert ours == new.commit
    _, tracking = ops.store.repo.resolve_rev(f"local:{new.ref}", True)
    assert tracking in (None, new.commit)
