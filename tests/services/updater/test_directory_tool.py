"""A directory install through the broker's tool (``dev.kiki.update.install {appId,
directory}``), and an agent's export or import (``out``, ``source``), are refused, for a local
caller and on behalf of a remote person alike: the
updater reads a directory only through the descriptor its caller passes on ``updater.sock``,
and none crosses the broker. The error says what to do instead."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kikitest import until
from kikitest.ostree_fixtures import make_app_tree
from libkiki.errors import ToolError
from libkiki.tools import ToolClient

pytestmark = pytest.mark.integration

APP = "org.example.local"
ALICE = {"subject": "alice", "session": "phone-1"}
POLICY = """
[[delegate]]
principals = ["uid:0"]

[[allow]]
principals = ["uid:0"]
tools = ["dev.kiki.update.*"]

[[allow]]
principals = ["remote:alice"]
tools = ["dev.kiki.update.*"]
"""


@pytest.fixture
def tools_sock(sockdir: Path, spawn_service: Any) -> Iterator[Path]:
    (sockdir / "etc").mkdir(exist_ok=True)
    (sockdir / "etc" / "tool-policy.toml").write_text(POLICY)
    broker: subprocess.Popen[bytes]
    broker, notes = spawn_service("tool-broker", extra_env={"KIKI_TOOL_BROKER_CALL_TIMEOUT": "30"})
    notes.wait_for("READY")
    _, notes = spawn_service("updater")
    notes.wait_for("READY")
    yield sockdir / "tools.sock"
    broker.terminate()
    assert broker.wait(timeout=30) == 0


def test_a_directory_install_through_the_broker_is_refused(
    tools_sock: Path, tmp_path: Path
) -> None:
    tree = make_app_tree(tmp_path / "app", APP, "1.0")
    install = {"appId": APP, "directory": str(tree)}

    async def scenario() -> None:
        async with ToolClient(tools_sock, timeout=30) as relay:

            async def registered() -> bool:
                return any(t["name"] == "dev.kiki.update.install" for t in await relay.list())

            await until(registered, "the updater's tools at the broker")
            # the person may call the tool (the policy says so) and is refused all the same
            listed = await relay.call("dev.kiki.update.list", {}, on_behalf_of=ALICE)
            assert listed["apps"] == []
            with pytest.raises(ToolError, match="kiki app install DIR"):
                await relay.call("dev.kiki.update.install", install, on_behalf_of=ALICE)
            with pytest.raises(ToolError, match="kiki app install DIR"):
                await relay.call("dev.kiki.update.install", install)
            with pytest.raises(ToolError, match="update takes no directory"):
                await relay.call(
                    "dev.kiki.update.update", {"appId": APP, "target": "app", **install}
                )
            # an agent's export and import name directories too: refused the same way
            agent = {"appId": "org.example.agent", "target": "agent"}
            for tool, where in (("exportAgent", "out"), ("importAgent", "source")):
                with pytest.raises(ToolError, match="kiki agent export"):
                    await relay.call(f"dev.kiki.update.{tool}", {**agent, where: str(tmp_path)})
                with pytest.raises(ToolError, match="kiki agent export"):
                    await relay.call(
                        f"dev.kiki.update.{tool}",
                        {**agent, where: str(tmp_path)},
                        on_behalf_of=ALICE,
                    )
            assert (await relay.call("dev.kiki.update.list", {}))["apps"] == []

    asyncio.run(scenario())
