"""Names are checked whole; an origin.json that does not parse loses its history, not the app."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from kiki_updater.config import UpdaterConfig
from kiki_updater.operations import Operations
from kiki_updater.pull import Remote
from kiki_updater.signing import generate_keypair
from kiki_updater.store import Store, app_ref, check_id
from kikitest.ostree_fixtures import in_worker, publish_versions
from libkiki.errors import InvalidParams

pytestmark = pytest.mark.unit

APP = "org.example.player"
OTHER = "org.example.other"
SECRET, PUBLIC = generate_keypair()


@pytest.mark.parametrize("ident", [f"{APP}\n", f"{APP}\n/../x", f"\n{APP}"])
def test_an_id_with_a_newline_is_refused(ident: str) -> None:
    with pytest.raises(InvalidParams):
        check_id("app", ident)


@pytest.mark.parametrize("channel", ["stable\n", "beta\n"])
def test_a_channel_with_a_newline_is_refused(channel: str) -> None:
    with pytest.raises(InvalidParams):
        app_ref("app", APP, channel)


def test_a_remote_name_with_a_newline_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError):
        UpdaterConfig.model_validate({"remotes": {"origin\n": {"url": "/srv/repo"}}})
    assert "origin" in UpdaterConfig.model_validate({"remotes": {"origin": {"url": "/r"}}}).remotes


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"history": []}'])
def test_one_unreadable_origin_json_loses_its_history_not_the_listing(
    tmp_path: Path, content: bytes
) -> None:
    published = tmp_path / "published"
    publish_versions(published, tmp_path, APP, ["1.0"], secret=SECRET)
    publish_versions(published, tmp_path, OTHER, ["1.0"], secret=SECRET)
    ops = Operations(Store(tmp_path / "device"))
    remote = Remote.of("local", str(published), ed25519_keys=(PUBLIC,))
    in_worker(ops.install, "app", APP, remote)
    in_worker(ops.install, "app", OTHER, remote)
    (tmp_path / "device" / "app" / APP / "origin.json").write_bytes(content)
    listed = {d.ident: d for d in ops.store.installed("app")}
    assert set(listed) == {APP, OTHER}
    assert listed[APP].ref == app_ref("app", APP)
    assert listed[APP].remote == "local"
    assert listed[APP].history == ()
    # and it updates from where it came from, writing a fresh origin.json
    publish_versions(published, tmp_path / "next", APP, ["1.1"], secret=SECRET)
    assert in_worker(ops.install, "app", APP, remote, update=True).version == "1.1"
    found = ops.store.deployed("app", APP)
    assert found is not None
    assert [h["version"] for h in found.history] == ["1.1"]
