"""``kiki session`` against a real relay over its admin socket."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

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


def test_share_dashboard_prints_the_page_with_the_token_in_its_fragment(
    device: DeviceRelay,
) -> None:
    done = kiki(device, "share", "cli2", "--role", "controller", "--dashboard")
    assert done.returncode == 0, done.stderr
    url = urlsplit(done.stdout.strip())
    assert (url.scheme, url.netloc, url.path, url.query) == (
        "http",
        f"127.0.0.1:{device.port}",
        "/dashboard/",
        "",
    )
    fragment = parse_qs(url.fragment)
    assert fragment["session"] == ["cli2"]
    token = fragment["token"][0]
    # The page is there, and the token joins the session as the page sends it: the first frame.
    with socket.create_connection(("127.0.0.1", device.port), timeout=15) as s:
        s.sendall(b"GET /dashboard/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200 ")

    async def go() -> None:
        # Synced: the relay answered its step 1, which it does only past a valid token.
        page = await YClient.join(device.url("cli2", None), first=json.dumps({"token": token}))
        assert page.open
        await page.close()

    asyncio.run(go())
    shared = json.loads(kiki(device, "share", "cli2", "--dashboard", "--json").stdout)
    assert shared["dashboard"].startswith(
        f"http://127.0.0.1:{device.port}/dashboard/#session=cli2&"
    )
    assert shared["dashboard"].endswith(f"token={shared['token']}")
