"""ed25519 signatures in ostree's detached-metadata format, checked by Kiki before anything is
deployed: unsigned, wrongly signed, unknown-key and tampered commits are refused and no ref
moves. Pulls from a local path (no sockets)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kiki_updater.gio import commit_dir, lib, open_repo
from kiki_updater.operations import Operations
from kiki_updater.pull import PullFailed, Remote
from kiki_updater.signing import (
    ED25519_KEY,
    SignatureRefused,
    commit_bytes,
    generate_keypair,
    sign_commit,
    verify_commit,
)
from kiki_updater.store import Store, app_ref
from kikitest.ostree_fixtures import in_worker, make_app_tree, publish_versions
from libkiki.errors import InvalidParams

pytestmark = pytest.mark.unit

APP = "org.example.player"
SECRET, PUBLIC = generate_keypair()
OTHER_SECRET, OTHER_PUBLIC = generate_keypair()


def refs(store: Store) -> dict[str, str]:
    _, found = store.repo.list_refs(None, None)
    return dict(found)


@pytest.fixture
def installed(tmp_path: Path) -> tuple[Operations, Path]:
    """1.0 installed from a signed local repository."""
    published = tmp_path / "published"
    publish_versions(published, tmp_path, APP, ["1.0"], secret=SECRET)
    updater = Operations(Store(tmp_path / "device"))
    in_worker(
        updater.install, "app", APP, Remote.of("local", str(published), ed25519_keys=(PUBLIC,))
    )
    return updater, published


def next_release(published: Path, tmp: Path, secret: str | None) -> str:
    return publish_versions(published, tmp, APP, ["1.1"], secret=secret)[0].commit


@pytest.mark.parametrize(
    ("secret", "trusted"),
    [
        (None, (PUBLIC,)),  # unsigned
        (OTHER_SECRET, (PUBLIC,)),  # signed by a key the device does not trust
        (SECRET, ()),  # the remote trusts no key at all
    ],
    ids=["unsigned", "unknown-key", "no-trusted-key"],
)
def test_an_update_that_is_not_signed_by_a_trusted_key_moves_no_ref(
    installed: tuple[Operations, Path], tmp_path: Path, secret: str | None, trusted: tuple[str, ...]
) -> None:
    updater, published = installed
    before = refs(updater.store)
    next_release(published, tmp_path / "next", secret)
    with pytest.raises(SignatureRefused):
        in_worker(
            updater.install,
            "app",
            APP,
            Remote.of("local", str(published), ed25519_keys=trusted),
            update=True,
        )
    assert refs(updater.store) == before
    assert updater.store.deployed("app", APP).version == "1.0"  # type: ignore[union-attr]
    # No content of the refused commit reached the store.
    assert not (updater.store.repo_path / "state").exists() or not any(
        (updater.store.repo_path / "state").iterdir()
    )


def test_a_signature_copied_from_another_commit_is_refused(
    installed: tuple[Operations, Path], tmp_path: Path
) -> None:
    updater, published = installed
    before = refs(updater.store)
    repo = open_repo(published)
    _, first = repo.resolve_rev(app_ref("app", APP), False)
    commit = next_release(published, tmp_path / "next", None)
    _, signed_meta = repo.read_commit_detached_metadata(first, None)
    repo.write_commit_detached_metadata(commit, signed_meta, None)
    with pytest.raises(SignatureRefused, match="no trusted key"):
        in_worker(
            updater.install,
            "app",
            APP,
            Remote.of("local", str(published), ed25519_keys=(PUBLIC,)),
            update=True,
        )
    assert refs(updater.store) == before


def test_a_wrong_signature_is_refused_and_a_good_one_beside_it_accepted(tmp_path: Path) -> None:
    repo = open_repo(tmp_path / "repo", "archive")
    commit = commit_dir(
        repo, make_app_tree(tmp_path / "t", APP, "1.0"), "r", subject="s", metadata={}
    )
    GLib = lib().GLib
    garbage = GLib.Variant("a{sv}", {ED25519_KEY: GLib.Variant("aay", [b"\\0" * 64, b"short"])})
    repo.write_commit_detached_metadata(commit, garbage, None)
    with pytest.raises(SignatureRefused):
        verify_commit(repo, commit, (PUBLIC,))
    sign_commit(repo, commit, SECRET)  # appended after the bad ones
    assert verify_commit(repo, commit, (OTHER_PUBLIC, PUBLIC)) == PUBLIC


def test_the_signature_is_over_the_commit_object_as_ostree_stores_it(tmp_path: Path) -> None:
    repo = open_repo(tmp_path / "repo", "archive")
    commit = commit_dir(
        repo, make_app_tree(tmp_path / "t", APP, "1.0"), "r", subject="s", metadata={}
    )
    sign_commit(repo, commit, SECRET)
    stored = (tmp_path / "repo" / "objects" / commit[:2] / f"{commit[2:]}.commit").read_bytes()
    assert commit_bytes(repo, commit) == stored
    import base64

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    _, meta = repo.read_commit_detached_metadata(commit, None)
    (signature,) = meta.unpack()[ED25519_KEY]
    Ed25519PublicKey.from_public_bytes(base64.b64decode(PUBLIC)).verify(bytes(signature), stored)


def test_a_tampered_commit_object_in_a_local_repository_is_refused(
    installed: tuple[Operations, Path], tmp_path: Path
) -> None:
    updater, published = installed
    before = refs(updater.store)
    commit = next_release(published, tmp_path / "next", SECRET)
    path = published / "objects" / commit[:2] / f"{commit[2:]}.commit"
    data = bytearray(path.read_bytes())
    data[data.index(b"1.1")] = ord("9")
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    with pytest.raises((PullFailed, SignatureRefused)):
        in_worker(
            updater.install,
            "app",
            APP,
            Remote.of("local", str(published), ed25519_keys=(PUBLIC,)),
            update=True,
        )
    assert refs(updater.store) == before


def test_keys_that_are_not_ed25519_keys_are_refused(tmp_path: Path) -> None:
    repo = open_repo(tmp_path / "repo", "archive")
    commit = commit_dir(
        repo, make_app_tree(tmp_path / "t", APP, "1.0"), "r", subject="s", metadata={}
    )
    with pytest.raises(InvalidParams):
        sign_commit(repo, commit, "not base64!")
    sign_commit(repo, commit, SECRET)
    with pytest.raises(InvalidParams):
        verify_commit(repo, commit, ("AAAA",))
    shutil.rmtree(tmp_path / "repo")
