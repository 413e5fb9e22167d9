"""Publishing to an archive repository and pulling from it: over HTTP from a static server on
127.0.0.1 (the delta is used, the summary is updated) and from a local path (untrusted: a
tampered object is refused)."""

from __future__ import annotations

import concurrent.futures
import shutil
from pathlib import Path

import pytest

from kiki_updater.gio import commit_metadata, open_repo
from kiki_updater.operations import AlreadyInstalled, NotInstalled, Operations, UpToDate
from kiki_updater.publish import publish
from kiki_updater.pull import PullFailed, Remote
from kiki_updater.signing import generate_keypair
from kiki_updater.store import Store
from kikitest.ostree_fixtures import in_worker, make_app_tree, publish_versions, serve_dir
from libkiki.errors import InvalidParams, NotFound, ValidationError

pytestmark = pytest.mark.integration

APP = "org.example.player"
SECRET, PUBLIC = generate_keypair()


@pytest.fixture
def published(tmp_path: Path) -> Path:
    repo = tmp_path / "published"
    publish_versions(repo, tmp_path, APP, ["1.0"], secret=SECRET, files=200)
    return repo


def ops(tmp_path: Path) -> Operations:
    return Operations(Store(tmp_path / "device" / "ostree"))


def test_a_release_carries_the_manifest_and_the_next_one_a_delta(tmp_path: Path) -> None:
    repo = tmp_path / "published"
    one, two = publish_versions(repo, tmp_path, APP, ["1.0", "1.1"], secret=None)
    assert (one.parent, one.delta) == (None, None)
    assert two.parent == one.commit
    assert two.delta == f"{one.commit}-{two.commit}"
    meta = commit_metadata(open_repo(repo), two.commit)
    assert (meta["version"], meta["kiki.id"], meta["kiki.kind"]) == ("1.1", APP, "app")
    assert '"version":"1.1"' in meta["kiki.manifest"]
    assert (repo / "summary").is_file()


def test_a_tree_without_a_manifest_is_not_published(tmp_path: Path) -> None:
    tree = make_app_tree(tmp_path / "tree", APP, "1.0")
    (tree / "kiki-app.json").unlink()
    with pytest.raises(ValidationError):
        publish(tree, tmp_path / "published")


def test_install_and_update_over_http_use_the_static_delta(tmp_path: Path, published: Path) -> None:
    updater = ops(tmp_path)
    with serve_dir(published) as (url, served):
        remote = Remote.of("origin", url, ed25519_keys=(PUBLIC,))
        first = in_worker(updater.install, "app", APP, remote)
        assert first.version == "1.0"
        with pytest.raises(AlreadyInstalled):
            in_worker(updater.install, "app", APP, remote)
        with pytest.raises(UpToDate):
            in_worker(updater.install, "app", APP, remote, update=True)
        full = served.bytes
        publish_versions(published, tmp_path / "again", APP, ["1.1"], secret=SECRET, files=200)
        served.reset()
        second = in_worker(updater.install, "app", APP, remote, update=True)
    assert (second.version, second.previous) == ("1.1", first.commit)
    got = {path: code for path, code in served.paths}
    delta = f"/deltas/{_delta_dir(first.commit, second.commit)}"
    assert got.get(f"{delta}/superblock") == 200, got
    assert got.get(f"{delta}/0") == 200, got
    # libostree 2022.7 scans the new commit (written from the superblock) while the delta's
    # part is still being applied in another thread: under load the scan can reach an object
    # the part has not written yet and fetch it loose too. Such a fetch can only be of what the
    # delta carries, the objects new in this release: never one of an unchanged file.
    loose = {
        "".join(path.split("/")[2:4]).removesuffix(".filez")
        for path in got
        if path.startswith("/objects/") and path.endswith(".filez")
    }
    assert loose <= _new_files(published, first.commit, second.commit), got
    assert served.bytes < full / 4
    text = (updater.store.home("app", APP) / "current" / "lib" / "m00" / "f00000.py").read_text()
    assert text == "version 1.1\n"


def test_update_of_an_app_not_installed_and_install_of_an_unknown_ref(
    tmp_path: Path, published: Path
) -> None:
    updater = ops(tmp_path)
    remote = Remote.of("local", str(published), ed25519_keys=(PUBLIC,))
    with pytest.raises(NotInstalled):
        in_worker(updater.install, "app", APP, remote, update=True)
    with pytest.raises(NotFound):
        in_worker(updater.install, "app", "org.example.missing", remote)


def test_a_local_path_pull_refuses_a_tampered_object(tmp_path: Path, published: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(published, copy)
    victim = max((copy / "objects").rglob("*.filez"), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[-20] ^= 0xFF
    victim.write_bytes(bytes(data))
    updater = ops(tmp_path)
    remote = Remote.of("local", str(copy), ed25519_keys=(PUBLIC,))
    with pytest.raises(PullFailed):
        in_worker(updater.install, "app", APP, remote)
    assert updater.store.current("app", APP) is None


def test_a_remote_is_an_http_url_or_an_absolute_path(tmp_path: Path) -> None:
    assert Remote.of("r", str(tmp_path)).url == tmp_path.as_uri()
    with pytest.raises(InvalidParams, match="absolute path"):
        Remote.of("r", "relative/path")


def test_two_apps_update_at_once_in_two_threads(tmp_path: Path) -> None:
    # Operations on two apps run in two worker threads against one store (the service's
    # max_operations); an OstreeRepo holds one transaction at a time, so each thread has its own.
    repo = tmp_path / "published"
    publish_versions(repo, tmp_path, APP, ["1.0"], secret=SECRET, files=200)
    publish_versions(repo, tmp_path, "org.example.other", ["1.0"], secret=SECRET, files=200)
    updater = ops(tmp_path)
    remote = Remote.of("local", str(repo), ed25519_keys=(PUBLIC,))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        done = list(
            pool.map(
                lambda app: in_worker(updater.install, "app", app, remote),
                [APP, "org.example.other"],
            )
        )
    assert [d.version for d in done] == ["1.0", "1.0"]
    assert sorted(d.ident for d in updater.store.installed("app")) == [
        "org.example.other",
        APP,
    ]


def _delta_dir(old: str, new: str) -> str:
    """libostree's path of the delta ``old``-``new`` (modified base64 of the checksums, the
    first two characters of ``old``'s its directory)."""
    import base64

    def b64(checksum: str) -> str:
        return base64.b64encode(bytes.fromhex(checksum)).decode().rstrip("=").replace("/", "_")

    frm = b64(old)
    return f"{frm[:2]}/{frm[2:]}-{b64(new)}"


def _new_files(repo: Path, old: str, new: str) -> set[str]:
    """The file objects ``new`` reaches and ``old`` does not."""
    from kiki_updater.gio import lib

    OSTree = lib().OSTree
    published = open_repo(repo)

    def files(commit: str) -> set[str]:
        _, reachable = published.traverse_commit(commit, 0, None)
        named = (OSTree.object_name_deserialize(key) for key in reachable)
        return {checksum for checksum, kind in named if kind == OSTree.ObjectType.FILE}

    return files(new) - files(old)
