"""GPG end to end with Debian's libostree: commits and summary signed with a gpg key, a remote
with ``gpg-verify=true`` and ``gpg-verify-summary=true`` and that key imported. libostree does
the checking here (Kiki only configures it): a release unsigned or signed by another key is
refused and moves no ref."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kiki_updater.operations import Operations
from kiki_updater.publish import publish
from kiki_updater.pull import PullFailed, Remote
from kiki_updater.signing import gpg_sign_commit, gpg_sign_summary
from kiki_updater.store import Store
from kikitest.ostree_fixtures import (
    GpgKey,
    gpg_key,
    in_worker,
    make_app_tree,
    serve_dir,
    stop_gpg_agent,
    write_manifest,
)

pytestmark = pytest.mark.interop

APP = "org.example.player"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GpgKey, GpgKey]]:
    base = tmp_path_factory.mktemp("gpg")
    good, other = gpg_key(base / "good"), gpg_key(base / "other", "Someone Else")
    yield good, other
    stop_gpg_agent(good)
    stop_gpg_agent(other)


def release(repo: Path, tree: Path, version: str, key: GpgKey | None) -> str:
    write_manifest(tree, APP, version)
    (tree / "version.txt").write_text(version)
    return publish(
        tree,
        repo,
        sign=(lambda r, c: gpg_sign_commit(r, c, key.fingerprint, key.homedir)) if key else None,
        sign_summary=(lambda r: gpg_sign_summary(r, key.fingerprint, key.homedir)) if key else None,
    ).commit


def refs(store: Store) -> dict[str, str]:
    _, found = store.repo.list_refs(None, None)
    return dict(found)


@pytest.mark.parametrize("signer", ["unsigned", "other"])
def test_gpg_signed_releases_install_and_others_are_refused(
    tmp_path: Path, keys: tuple[GpgKey, GpgKey], signer: str
) -> None:
    good, other = keys
    published = tmp_path / "published"
    tree = make_app_tree(tmp_path / "tree", APP, "1.0")
    release(published, tree, "1.0", good)
    updater = Operations(Store(tmp_path / "device"))
    with serve_dir(published) as (url, _):
        remote = Remote.of("origin", url, gpg_keyring=good.keyring)
        assert in_worker(updater.install, "app", APP, remote).version == "1.0"
        before = refs(updater.store)
        release(published, tree, "1.1", None if signer == "unsigned" else other)
        with pytest.raises(PullFailed, match=r"(?i)gpg|signature|summary"):
            in_worker(updater.install, "app", APP, remote, update=True)
        assert refs(updater.store) == before
        release(published, tree, "1.2", good)
        assert in_worker(updater.install, "app", APP, remote, update=True).version == "1.2"


@pytest.mark.parametrize("signer", ["unsigned", "other"])
def test_a_bad_commit_under_a_good_summary_is_refused(
    tmp_path: Path, keys: tuple[GpgKey, GpgKey], signer: str
) -> None:
    good, other = keys
    published = tmp_path / "published"
    tree = make_app_tree(tmp_path / "tree", APP, "1.0")
    release(published, tree, "1.0", good)
    updater = Operations(Store(tmp_path / "device"))
    with serve_dir(published) as (url, _):
        remote = Remote.of("origin", url, gpg_keyring=good.keyring)
        in_worker(updater.install, "app", APP, remote)
        before = refs(updater.store)
        write_manifest(tree, APP, "1.1")
        key = None if signer == "unsigned" else other
        publish(
            tree,
            published,
            sign=(lambda r, c: gpg_sign_commit(r, c, key.fingerprint, key.homedir))
            if key
            else None,
            sign_summary=lambda r: gpg_sign_summary(r, good.fingerprint, good.homedir),
        )
        with pytest.raises(PullFailed, match=r"(?i)gpg|signature"):
            in_worker(updater.install, "app", APP, remote, update=True)
        assert refs(updater.store) == before


def test_a_good_commit_under_a_badly_signed_summary_is_refused(
    tmp_path: Path, keys: tuple[GpgKey, GpgKey]
) -> None:
    good, other = keys
    published = tmp_path / "published"
    tree = make_app_tree(tmp_path / "tree", APP, "1.0")
    release(published, tree, "1.0", good)
    updater = Operations(Store(tmp_path / "device"))
    with serve_dir(published) as (url, _):
        remote = Remote.of("origin", url, gpg_keyring=good.keyring)
        in_worker(updater.install, "app", APP, remote)
        before = refs(updater.store)
        write_manifest(tree, APP, "1.1")
        publish(
            tree,
            published,
            sign=lambda r, c: gpg_sign_commit(r, c, good.fingerprint, good.homedir),
            sign_summary=lambda r: gpg_sign_summary(r, other.fingerprint, other.homedir),
        )
        with pytest.raises(PullFailed, match=r"(?i)gpg|signature|summary"):
            in_worker(updater.install, "app", APP, remote, update=True)
        assert refs(updater.store) == before
