"""A directory a caller passed as a descriptor: one rule for all (the caller's own, outside the
updater's state), and files written into it or read from it never through a symlink."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiki_updater.handover import check_taken, copy_in, copy_out
from libkiki.errors import InvalidParams, PermissionDenied
from libkiki.peer import PeerCred

pytestmark = pytest.mark.unit

OWN_UID = 990


def _peer(uid: int) -> PeerCred:
    return PeerCred(pid=1, uid=uid, gid=uid)


@pytest.fixture
def opened() -> Iterator[list[int]]:
    fds: list[int] = []
    yield fds
    for fd in fds:
        os.close(fd)


def _open(path: Path, fds: list[int], flags: int = os.O_DIRECTORY) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
    fds.append(fd)
    return fd


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_directory_of_another_uid_is_refused(tmp_path: Path, opened: list[int]) -> None:
    app = tmp_path / "app"
    app.mkdir()
    os.chown(app, 1234, 1234)
    fd = _open(app, opened)
    with pytest.raises(PermissionDenied, match="not yours"):
        check_taken("out", fd, _peer(4321), OWN_UID, ())
    check_taken("out", fd, _peer(1234), OWN_UID, ())
    check_taken("out", fd, _peer(0), OWN_UID, ())  # root may
    check_taken("out", fd, _peer(OWN_UID), OWN_UID, ())


def test_a_file_and_the_updaters_own_state_are_refused(tmp_path: Path, opened: list[int]) -> None:
    state = tmp_path / "state"
    (state / "repo" / "refs").mkdir(parents=True)
    (tmp_path / "f").write_text("x")
    with pytest.raises(InvalidParams, match="not a directory"):
        check_taken("source", _open(tmp_path / "f", opened, 0), None, OWN_UID, (state,))
    for inside in (state, state / "repo" / "refs"):
        with pytest.raises(InvalidParams, match="inside the updater's state"):
            check_taken("source", _open(inside, opened), None, OWN_UID, (state,))
    # reached through a symlink: the descriptor is what counts, not the name
    (tmp_path / "link").symlink_to(state / "repo")
    with pytest.raises(InvalidParams, match="inside the updater's state"):
        check_taken("source", _open(tmp_path / "link", opened), None, OWN_UID, (state,))
    check_taken("source", _open(tmp_path, opened), None, OWN_UID, (state,))


def test_a_file_written_replaces_a_planted_symlink_and_is_private(
    tmp_path: Path, opened: list[int]
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "state.delta").symlink_to(victim)
    made = tmp_path / "made"
    made.write_bytes(b"delta")
    copy_out(made, _open(out, opened), "state.delta", None)
    assert victim.read_text() == "root's file\n"
    written = os.lstat(out / "state.delta")
    assert stat.S_ISREG(written.st_mode)
    assert stat.S_IMODE(written.st_mode) == 0o600
    assert (out / "state.delta").read_bytes() == b"delta"


def test_a_file_read_is_never_a_symlink_nor_a_fifo(tmp_path: Path, opened: list[int]) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (tmp_path / "secret").write_text("root only")
    (source / "code.delta").symlink_to(tmp_path / "secret")
    os.mkfifo(source / "state.delta")
    fd = _open(source, opened)
    with pytest.raises(InvalidParams, match=r"code\.delta"):
        copy_in(fd, "code.delta", tmp_path / "a")
    with pytest.raises(InvalidParams, match="not a regular file"):
        copy_in(fd, "state.delta", tmp_path / "b")
    assert not (tmp_path / "a").exists()
