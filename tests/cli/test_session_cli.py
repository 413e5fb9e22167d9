"""``kiki session`` against a real relay over its admin socket."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kikitest import VENV_BIN
from kikitest.sync_fixtures import DeviceRelay, YClient

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceRelay]:
    relay = DeviceRelay(Path(tmp_path_factory.mktemp("relay")))
    relay.start()
    yield relay
    relay.close()


def kiki(device: DeviceRelay, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "kiki"), "session", *args],
        env=device.env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_share_prints_a_url_a_client_joins_with_its_role(device: DeviceRelay) -> None:
    url = kiki(device, "share", "cli1", "--role", "controller", "--ttl", "1h").stdout.strip()
    assert url.startswith(f"ws://127.0.0.1:{device.port}/session/cli1?token=")
    shared = json.loads(kiki(device, "share", "cli1", "--role", "observer", "--json").stdout)
    assert shared["role"] == "observer"

    async def go() -> None:
        writer = await YClient.join(url)
        writer.map["from"] = "cli"
        observer = await YClient.join(shared["url"])
        observer.map["no"] = 1
        assert await observer.closed() == 1008
        await writer.close()

    asyncio.run(go())
    dumped = json.loads(kiki(device, "dump", "cli1").stdout)
    assert dumped["map"] == {"from": "cli"}
    listed = kiki(device, "list").stdout
    assert "cli1" in listed
    shown = json.loads(kiki(device, "show", "cli1").stdout)
    assert shown["name"] == "cli1"
    watched = kiki(device, "watch", "cli1", "--count", "1").stdout
    assert json.loads(watched)["map"] == {"from": "cli"}


def test_errors_are_one_line_and_exit_1(device: DeviceRelay) -> None:
    bad = kiki(device, "share", "cli1", "--role", "observer", "--ttl", "400d")
    assert bad.returncode == 1
    assert bad.stderr.startswith("kiki session: ")
    assert kiki(device, "show", "never-was").returncode == 1
    gone = subprocess.run(
        [str(VENV_BIN / "kiki"), "session", "--socket", "/nonexistent.sock", "list"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert gone.returncode == 1
    assert "cannot connect" in gone.stderr
