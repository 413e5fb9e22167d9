"""A directory install (``install {appId, directory}``): the updater, which runs as root,
reads a caller's directory only when the caller could, and never one inside its own state."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kiki_updater.local import LocalBuilds, check_directory
from kiki_updater.signing import public_of
from libkiki.errors import InvalidParams, PermissionDenied
from libkiki.peer import PeerCred

pytestmark = pytest.mark.unit

OWN_UID = 990


def _peer(uid: int) -> PeerCred:
    return PeerCred(pid=1, uid=uid, gid=uid)


def test_a_directory_of_another_uid_is_refused(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    os.chown(app, 1234, 1234)
    state = tmp_path / "state"
    with pytest.raises(PermissionDenied, match="not yours"):
        check_directory(str(app), _peer(4321), OWN_UID, state)
    assert check_directory(str(app), _peer(1234), OWN_UID, state) == app
    assert check_directory(str(app), _peer(0), OWN_UID, state) == app  # root may
    assert check_directory(str(app), _peer(OWN_UID), OWN_UID, state) == app


def test_a_symlink_a_relative_path_and_the_updaters_own_state_are_refused(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    (state / "repo").mkdir(parents=True)
    (tmp_path / "link").symlink_to(state / "repo")
    with pytest.raises(InvalidParams, match="symlink"):
        check_directory(str(tmp_path / "link"), None, OWN_UID, state)
    with pytest.raises(InvalidParams, match="absolute"):
        check_directory("app", None, OWN_UID, state)
    with pytest.raises(InvalidParams, match="inside the updater's state"):
        check_directory(str(state / "repo"), None, OWN_UID, state)
    with pytest.raises(InvalidParams, match="No such file"):
        check_directory(str(tmp_path / "missing"), None, OWN_UID, state)


def test_the_local_key_is_made_once_and_kept_private(tmp_path: Path) -> None:
    local = LocalBuilds(tmp_path)
    first = local.remote()
    assert (local.key_path.stat().st_mode & 0o777) == 0o600
    assert LocalBuilds(tmp_path).remote().ed25519_keys == first.ed25519_keys
    assert first.ed25519_keys == (public_of(local.key_path.read_text()),)
    assert first.url == local.repo_path.as_uri()
