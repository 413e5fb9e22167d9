"""What is deployed is the commit whose signature was checked, and the check is over the
commit's own bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kiki_updater.gio import commit_dir, open_repo
from kiki_updater.operations import Operations
from kiki_updater.publish import regenerate_summary
from kiki_updater.pull import Remote
from kiki_updater.signing import SignatureRefused, generate_keypair, sign_commit, verify_commit
from kiki_updater.store import Store
from kikitest.ostree_fixtures import in_worker, make_app_tree, publish_versions, write_manifest

pytestmark = pytest.mark.unit

APP = "org.example.player"
SECRET, PUBLIC = generate_keypair()


def test_a_ref_moved_to_an_unsigned_commit_after_the_check_is_not_deployed(
    tmp_path: Path,
) -> None:
    published = tmp_path / "published"
    (release,) = publish_versions(published, tmp_path, APP, ["1.0"], secret=SECRET)
    evil_tree = make_app_tree(tmp_path / "evil", APP, "6.6.6")
    write_manifest(evil_tree, APP, "6.6.6")
    evil = commit_dir(
        open_repo(published),
        evil_tree,
        "scratch/evil",
        subject="evil",
        metadata={
            "version": "6.6.6",
            "kiki.id": APP,
            "kiki.kind": "app",
            "ostree.ref-binding": [release.ref],
        },
    )

    def swap_the_ref(name: str, info: dict[str, Any]) -> None:
        if name == "pull":  # after the check, before the content pull
            repo = open_repo(published)
            repo.set_ref_immediate(None, release.ref, evil, None)
            regenerate_summary(repo)

    ops = Operations(Store(tmp_path / "device"))
    remote = Remote.of("local", str(published), ed25519_keys=(PUBLIC,))
    got = in_worker(ops.install, "app", APP, remote, phase=swap_the_ref)
    assert got.commit == release.commit
    assert got.version == "1.0"


def test_a_commit_not_matching_its_checksum_is_refused_in_a_trusting_repository(
    tmp_path: Path,
) -> None:
    # A repository opened as usual (not an untrusted pull) takes a stored object as it is:
    # verify_commit's own sha256 is what refuses an object edited on disk.
    repo = open_repo(tmp_path / "repo", "archive")
    tree = make_app_tree(tmp_path / "t", APP, "1.0")
    commit = commit_dir(repo, tree, "r", subject="version 1.0", metadata={})
    sign_commit(repo, commit, SECRET)
    assert verify_commit(repo, commit, (PUBLIC,)) == PUBLIC
    path = tmp_path / "repo" / "objects" / commit[:2] / f"{commit[2:]}.commit"
    data = bytearray(path.read_bytes())
    data[data.index(b"1.0")] = ord("9")
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(SignatureRefused, match="does not match its checksum"):
        verify_commit(open_repo(tmp_path / "repo"), commit, (PUBLIC,))
