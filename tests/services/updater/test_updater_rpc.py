"""The updater service over its socket: install (with MCP progress), list, update, history,
rollback, remove, status; a second operation on a busy app is refused; a caller who is not a
manager may read but not change."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiki_updater.signing import generate_keypair
from kikitest import until
from kikitest.ostree_fixtures import Served, publish_versions, serve_dir
from libkiki.errors import Conflict, NotFound
from libkiki.paths import UPDATER_SOCKET
from libkiki.rpc import connect_unix

pytestmark = pytest.mark.integration

APP = "org.example.player"
SECRET, PUBLIC = generate_keypair()
U = "dev.kiki.update."


@pytest.fixture
def published(tmp_path: Path) -> Iterator[tuple[Path, str, Served]]:
    repo = tmp_path / "published"
    publish_versions(repo, tmp_path, APP, ["1.0"], secret=SECRET, files=300)
    with serve_dir(repo) as (url, served):
        yield repo, url, served


@pytest.fixture
def updater(sockdir: Path, spawn_service: Any, published: tuple[Path, str, Served]) -> Path:
    _, url, _ = published
    (sockdir / "etc").mkdir()
    (sockdir / "etc" / "updater.toml").write_text(
        f'broker_tools = false\nprogress_interval = 0.02\n[remotes.origin]\nurl = "{url}"\n'
        f'ed25519_keys = ["{PUBLIC}"]\n'
    )
    _, notes = spawn_service("updater")
    notes.wait_for("READY")
    return sockdir / UPDATER_SOCKET


async def call(path: Path, method: str, params: dict[str, Any] | None = None) -> Any:
    async with connect_unix(path) as conn:
        return await conn.request(U + method, params or {})


def test_install_update_rollback_history_remove_over_the_socket(
    updater: Path, published: tuple[Path, str, Served], tmp_path: Path
) -> None:
    repo, _, _ = published

    async def scenario() -> None:
        progress: list[Any] = []

        async def on_progress(*said: Any) -> None:
            progress.append(said)

        async with connect_unix(updater) as conn:
            done = await conn.request(
                U + "install", {"appId": APP, "remote": "origin"}, on_progress=on_progress
            )
        op = done["operation"]
        assert (op["state"], op["kind"], op["target"], op["progressPercent"]) == (
            "succeeded",
            "install",
            "app",
            100,
        )
        assert progress  # MCP progress came before the answer
        listed = await call(updater, "list")
        (app,) = listed["apps"]
        assert (app["appId"], app["version"]) == (APP, "1.0")
        with pytest.raises(Conflict, match="up to date"):
            await call(updater, "update", {"appId": APP})
        publish_versions(repo, tmp_path / "next", APP, ["1.1"], secret=SECRET, files=300)
        updated = (await call(updater, "update", {"appId": APP}))["operation"]
        assert updated["commit"] != app["commit"]
        back = (await call(updater, "rollback", {"appId": APP}))["operation"]
        assert back["commit"] == app["commit"]
        history = await call(updater, "history", {"appId": APP})
        assert [e["action"] for e in history["entries"]] == ["rollback", "update", "install"]
        status = await call(updater, "status")
        assert [(o["kind"], o["state"]) for o in status["operations"]] == [
            ("rollback", "succeeded"),
            ("update", "succeeded"),
            ("update", "failed"),  # the one that found it up to date
            ("install", "succeeded"),
        ]
        await call(updater, "remove", {"appId": APP})
        assert (await call(updater, "list"))["apps"] == []
        with pytest.raises(NotFound):
            await call(updater, "history", {"appId": APP})

    asyncio.run(scenario())


def test_a_second_operation_on_a_busy_app_is_refused(
    updater: Path, published: tuple[Path, str, Served]
) -> None:
    _, _, served = published
    served.rate = 50_000  # slow enough that the first install is still pulling

    async def scenario() -> None:
        first = asyncio.create_task(call(updater, "install", {"appId": APP, "remote": "origin"}))

        async def running() -> bool:
            ops = (await call(updater, "status"))["operations"]
            return any(o["state"] == "running" for o in ops)

        await until(running, "the first install running", within=20)
        with pytest.raises(Conflict, match="busy") as refused:
            await call(updater, "install", {"appId": APP, "remote": "origin"})
        assert refused.value.data["error"] == "Busy"
        served.rate = 0
        assert (await first)["operation"]["state"] == "succeeded"

    asyncio.run(scenario())


def test_an_unknown_remote_and_a_bad_id_are_refused(updater: Path) -> None:
    async def scenario() -> None:
        with pytest.raises(NotFound, match="no remote"):
            await call(updater, "install", {"appId": APP, "remote": "nowhere"})
        with pytest.raises(Exception, match="not an app id"):
            await call(updater, "install", {"appId": "../etc", "remote": "origin"})

    asyncio.run(scenario())


def test_a_pull_reports_its_bytes_while_it_runs(
    updater: Path, published: tuple[Path, str, Served], tmp_path: Path
) -> None:
    repo, _, served = published
    blob = {"blob": os.urandom(300_000)}  # incompressible, sent in one paced response
    publish_versions(repo, tmp_path / "big", APP, ["1.1"], secret=SECRET, extra=blob)
    served.rate = 120_000  # libostree updates its progress once a second: a pull of ~2.5 s

    async def scenario() -> list[str]:
        said: list[str] = []

        async def on_progress(params: dict[str, Any]) -> None:
            said.append(str(params.get("message", "")))

        async with connect_unix(updater) as conn:
            await conn.request(
                U + "install", {"appId": APP, "remote": "origin"}, on_progress=on_progress
            )
        return said

    messages = asyncio.run(scenario())
    pulling = [int(m.split()[1]) for m in messages if m.startswith("pull ")]
    # read from libostree's progress by the service's poll while the content came
    assert any(n > 0 for n in pulling), messages
