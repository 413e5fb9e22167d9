"""``install {appId, directory}`` on ``updater.sock``: the updater asks for the directory's
descriptor (``dev.kiki.update.sendDirectory``) and reads the tree through it alone; the path in
the request is the caller's name for it, never opened (on a device the updater cannot see the
caller's ``/home`` or ``/tmp``, and a path can be swapped between a check and a read)."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from kiki_updater.server import SEND_DIRECTORY
from kikitest.ostree_fixtures import make_app_tree
from libkiki.errors import KikiError
from libkiki.peer import peer_cred
from libkiki.rpc import Connection, RequestContext, connect_unix

pytestmark = pytest.mark.integration

APP = "org.example.local"


@pytest.fixture
def updater_sock(sockdir: Path, spawn_service: Any) -> Path:
    (sockdir / "etc").mkdir(exist_ok=True)
    (sockdir / "etc" / "updater.toml").write_text("broker_tools = false\n")
    _, notes = spawn_service("updater")
    notes.wait_for("READY")
    return sockdir / "updater.sock"


async def _install(path: Path, params: dict[str, Any], fds: list[int]) -> Any:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, str(path))

    async def send(ctx: RequestContext) -> None:
        socket.send_fds(sock, [b"\n"], fds)

    methods = {SEND_DIRECTORY: send}
    async with Connection(sock, peer=peer_cred(sock, app=False), methods=methods) as conn:
        return await conn.request("dev.kiki.update.install", params, timeout=60)


async def _listed(path: Path) -> list[dict[str, Any]]:
    async with connect_unix(path) as conn:
        listed: list[dict[str, Any]] = (await conn.request("dev.kiki.update.list", {}))["apps"]
        return listed


def test_the_tree_is_read_through_the_descriptor_never_the_path(
    updater_sock: Path, tmp_path: Path
) -> None:
    passed = make_app_tree(tmp_path / "passed", APP, "1.0", files=2)
    named = make_app_tree(tmp_path / "named", APP, "6.6.6", files=2)
    fd = os.open(passed, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        done = asyncio.run(_install(updater_sock, {"appId": APP, "directory": str(named)}, [fd]))
    finally:
        os.close(fd)
    assert done["operation"]["state"] == "succeeded"
    (app,) = asyncio.run(_listed(updater_sock))
    assert app["version"] == "1.0"


def test_a_descriptor_that_is_not_a_directory_or_two_are_refused(
    updater_sock: Path, tmp_path: Path
) -> None:
    tree = make_app_tree(tmp_path / "app", APP, "1.0", files=2)
    params = {"appId": APP, "directory": str(tree)}
    manifest = os.open(tree / "kiki-app.json", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with pytest.raises(KikiError, match="not a directory"):
            asyncio.run(_install(updater_sock, params, [manifest]))
        with pytest.raises(KikiError, match="descriptors were passed"):
            asyncio.run(_install(updater_sock, params, [manifest, manifest]))
    finally:
        os.close(manifest)


def test_the_local_archive_keeps_only_the_newest_build_and_forgets_a_removed_app(
    updater_sock: Path, tmp_path: Path, sockdir: Path
) -> None:
    tree = make_app_tree(tmp_path / "app", APP, "1.0", files=2)
    for version in ("1.0", "1.1", "1.2"):
        (tree / "kiki-app.json").write_text(f'{{"id": "{APP}", "version": "{version}"}}')
        fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            asyncio.run(_install(updater_sock, {"appId": APP, "directory": str(tree)}, [fd]))
        finally:
            os.close(fd)
    (local,) = sockdir.glob("state/**/local/objects")
    assert len(list(local.glob("*/*.commit"))) == 1

    async def remove() -> Any:
        async with connect_unix(updater_sock) as conn:
            return await conn.request("dev.kiki.update.remove", {"appId": APP})

    assert asyncio.run(remove())["operation"]["state"] == "succeeded"
    assert list(local.glob("*/*.commit")) == []
    assert list(local.parent.glob("refs/heads/**/stable")) == []


def test_a_directory_of_another_app_commits_nothing(
    updater_sock: Path, tmp_path: Path, sockdir: Path
) -> None:
    tree = make_app_tree(tmp_path / "app", "org.example.other", "1.0", files=2)
    fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with pytest.raises(KikiError, match=r"org\.example\.other's, not org\.example\.local's"):
            asyncio.run(_install(updater_sock, {"appId": APP, "directory": str(tree)}, [fd]))
    finally:
        os.close(fd)
    assert list(sockdir.glob("state/**/local/refs/heads/**/stable")) == []
