"""`kiki up` ends its start with the dashboard's URL, and that page drives the device: in a real
browser (Debian's chromium under playwright-core), the dashboard shows the demo app's form;
typing a name and pressing Save there makes the demo app add the contact (seen through
`kiki a11y`), and the result shows on the page; a second person and an observer on links `kiki
session share` prints see it, each other's actions and presence; the observer's controls are
disabled and its crafted intent refused; and after the relay is killed (kiki up restarts it) the
page is back and acts again.

The whole constellation runs, with the sync relay's device link for the session `kiki up`
names and the broker trusting the relay as a delegate (the policy `kiki up` writes).
Screenshots go to ``$KIKI_TEST_ARTIFACTS/dashboard/<test>/`` (default
``build/test-artifacts``); the test prints their list.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kikitest import VENV_BIN
from kikitest.node.browser import Browser, chromium, screenshots

pytestmark = pytest.mark.interop

URL = re.compile(r"^  (http://127\.0\.0\.1:\d+/dashboard/#session=local&token=\S+)$")


def lines_of(proc: subprocess.Popen[str]) -> queue.SimpleQueue[str]:
    """kiki up's output, line by line, read by a thread (and echoed for a failing run)."""
    lines: queue.SimpleQueue[str] = queue.SimpleQueue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return lines


def dashboard_line(lines: queue.SimpleQueue[str], within: float = 120) -> str:
    deadline = time.monotonic() + within
    seen = []
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        seen.append(line)
        if match := URL.match(line):
            return match[1]
    raise AssertionError("kiki up printed no dashboard URL:\n" + "\n".join(seen[-60:]))


@pytest.fixture
def shots(request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]) -> Iterator[Path]:
    with screenshots(request.node.name, capsys.disabled()) as where:
        yield where


def test_the_dashboard_kiki_up_prints_drives_the_demo_app(
    sockdir: Path, service_env: dict[str, str], shots: Path
) -> None:
    env = dict(service_env)
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    env["KIKI_LOG_LEVEL"] = "INFO"
    proc = subprocess.Popen(
        [
            str(VENV_BIN / "kiki"),
            "up",
            "--runtime-dir",
            str(sockdir),
            "--state-dir",
            str(sockdir / "state"),
            "--relay-port",
            "0",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    browser = None
    try:
        output = lines_of(proc)
        url = dashboard_line(output)
        # The token's id follows, to revoke it by.
        claims = json.loads(
            base64.urlsafe_b64decode(url.rsplit("token=", 1)[1].split(".")[1] + "==")
        )
        revoke = output.get(timeout=30)
        assert f"`kiki session revoke local {claims['jti']}`" in revoke, revoke
        # The broker trusts the relay for the session's people through the policy kiki up wrote.
        policy = (sockdir / "state" / "up" / "tool-policy.toml").read_text()
        assert "[[delegate]]" in policy
        assert 'principals = ["remote:*"]' in policy

        def kiki(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(VENV_BIN / "kiki"), *args],
                env={**env, "KIKI_RUNTIME_DIR": str(sockdir)},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )

        def contacts() -> list[str]:
            found = kiki("a11y", "find", "role=listItem", "--json")
            if found.returncode != 0:
                return []
            return [str(n.get("name")) for n in json.loads(found.stdout)["nodes"]]

        def share(role: str, sub: str) -> str:
            done = kiki("session", "share", "local", "--role", role, "--sub", sub, "--dashboard")
            assert done.returncode == 0, done.stderr
            return done.stdout.strip()

        def relay_pid() -> int:
            state = json.loads((sockdir / "up.json").read_text())
            relay = state["services"]["sync-relay"]
            return int(relay["pid"]) if relay["state"] == "ready" else 0

        chromium()
        browser = Browser()

        async def go(b: Browser) -> None:
            await b.call("launch", executable=chromium())
            await b.call("open", page="me", url=url)
            await b.call("waitText", page="me", selector="#connection", text="Live")
            # The demo app's form, from the device link's screen.
            await b.call("controls", page="me", role="button", name="Save")
            assert await b.call("controls", page="me", role="textbox", name="Name") == [False]
            await b.call("fill", page="me", label="Name", value="Grace Hopper")
            await b.call("click", page="me", role="button", name="Save")
            await b.call("waitText", page="me", selector="#activity", text="Saved Grace Hopper")
            await b.call("waitText", page="me", selector="#screen", text="Grace Hopper")
            path = shots / "kiki-up.png"
            await b.call("screenshot", page="me", path=str(path))
            assert "Grace Hopper" in contacts()

            # A second person and an observer, on links `kiki session share` prints.
            await b.call("open", page="bob", url=share("controller", "bob"))
            await b.call("open", page="olga", url=share("observer", "olga"))
            await b.call("waitText", page="bob", selector="#activity", text="Saved Grace Hopper")
            await b.call("waitText", page="me", selector="#presence", text="bob")
            await b.call("waitText", page="bob", selector="#presence", text="uid:")
            await b.call("fill", page="bob", label="Name", value="Alan Kay")
            await b.call("click", page="bob", role="button", name="Save")
            await b.call("waitText", page="me", selector="#activity", text="Saved Alan Kay")
            await b.call("waitText", page="olga", selector="#screen", text="Alan Kay")
            assert await b.call("controls", page="olga", role="button", name="Save") == [True]
            assert await b.call("controls", page="olga", role="textbox", name="Name") == [True]
            await b.call(
                "evaluate",
                page="olga",
                expression="kikiDashboard.doc.getMap('intents').set('crafted', {id: 'crafted', "
                "tool: 'dev.kiki.a11y.act', input: {ref: '1:9', action: 'press'}, by: 'olga', "
                "createdAt: new Date().toISOString()})",
            )
            await b.call("waitText", page="olga", selector="#connection", text="PermissionDenied")
            assert "crafted" not in json.loads(kiki("session", "dump", "local").stdout)["intents"]

            # The relay dies; kiki up starts it again on the same socket; the page comes back
            # and acts through the new link.
            pid = relay_pid()
            os.kill(pid, signal.SIGKILL)
            await b.call("waitText", page="me", selector="#connection", text="Offline")
            async with asyncio.timeout(60):  # kiki up's state file says when: polled
                while relay_pid() in (0, pid):  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
            await b.call("waitText", page="me", selector="#connection", text="Live")
            await b.call("fill", page="me", label="Name", value="Barbara Liskov")
            await b.call("click", page="me", role="button", name="Save")
            await b.call("waitText", page="me", selector="#activity", text="Saved Barbara Liskov")
            path = shots / "kiki-up-after-restart.png"
            await b.call("screenshot", page="me", path=str(path))

        asyncio.run(go(browser))
        assert {"Grace Hopper", "Alan Kay", "Barbara Liskov"} <= set(contacts())
        assert browser.errors() == []
    finally:
        if browser is not None:
            browser.close()
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
