"""The updater's tools through the real broker: install by a tool call with MCP progress, the
operations stream (dev.kiki.update.subscribeOperations) following it phase by phase."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiki_updater.signing import generate_keypair
from kikitest import until
from kikitest.ostree_fixtures import publish_versions, serve_dir
from libkiki.tools import ToolClient

pytestmark = pytest.mark.integration

APP = "org.example.player"
SECRET, PUBLIC = generate_keypair()


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    repo = tmp_path / "published"
    publish_versions(repo, tmp_path, APP, ["1.0"], secret=SECRET, files=100)
    with serve_dir(repo) as (found, _):
        yield found


@pytest.mark.parametrize("broker", [{"KIKI_TOOL_BROKER_CALL_TIMEOUT": "30"}], indirect=True)
def test_install_through_the_broker_streams_its_phases(
    broker: tuple[Path, Any],
    sockdir: Path,
    spawn_service: Any,
    url: str,
) -> None:
    tools_sock, _ = broker
    (sockdir / "etc" / "updater.toml").write_text(
        f'progress_interval = 0.02\n[remotes.origin]\nurl = "{url}"\ned25519_keys = ["{PUBLIC}"]\n'
    )
    _, notes = spawn_service("updater")
    notes.wait_for("READY")

    async def scenario() -> None:
        async with ToolClient(tools_sock, timeout=30) as client:

            async def registered() -> bool:
                return any(t["name"] == "dev.kiki.update.install" for t in await client.list())

            await until(registered, "the updater's tools at the broker")
            phases: list[str] = []
            async with client.subscribe("dev.kiki.update.subscribeOperations") as stream:
                progress: list[Any] = []

                async def on_progress(*said: Any) -> None:
                    progress.append(said)

                done = await client.call(
                    "dev.kiki.update.install",
                    {"appId": APP, "remote": "origin"},
                    on_progress=on_progress,
                )
                assert done["operation"]["state"] == "succeeded"
                async with asyncio.timeout(20):
                    async for message in stream.messages():
                        op = message["operation"]
                        phases.append(op["phase"])
                        if op["state"] != "running":
                            break
            assert phases[-1] == "done"
            assert {"verify", "pull", "checkout", "swap"} <= set(phases)
            assert progress
            listed = await client.call("dev.kiki.update.list", {})
            assert [a["appId"] for a in listed["apps"]] == [APP]

    asyncio.run(scenario())
