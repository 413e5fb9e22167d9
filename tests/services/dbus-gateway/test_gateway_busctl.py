"""dev.kiki.Tools1 from busctl, as the README shows it, and the audit seeing busctl itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from kikitest import dbus_fixtures
from kikitest.dbus_fixtures import Stack
from libkiki.constellation import GATEWAY_BUS_NAME, GATEWAY_OBJECT_PATH

pytestmark = pytest.mark.interop

# The session's shared peers (kikitest.dbus_fixtures).
gateway_stack = dbus_fixtures.gateway_stack


def busctl(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("busctl")
    if exe is None:
        pytest.fail("busctl (systemd) is not installed")
    return subprocess.run(
        [exe, "--user", "--json=short", *args],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_busctl_calls_a_tool_as_the_readme_shows(gateway_stack: Stack) -> None:
    done = busctl(
        gateway_stack,
        "call",
        GATEWAY_BUS_NAME,
        GATEWAY_OBJECT_PATH,
        "dev.kiki.Tools1",
        "Call",
        "ss",
        "dev.kiki.media.listPlayers",
        "{}",
    )
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply["type"] == "s"
    assert "players" in json.loads(reply["data"][0])


def test_busctl_is_refused_as_itself(gateway_stack: Stack) -> None:
    done = busctl(
        gateway_stack,
        "call",
        GATEWAY_BUS_NAME,
        GATEWAY_OBJECT_PATH,
        "dev.kiki.Tools1",
        "Call",
        "ss",
        "dev.kiki.tools.readAuditLog",
        "{}",
    )
    assert done.returncode != 0
    # busctl prints the error's message: the broker decided for busctl's uid, not the gateway's.
    assert f"remote:dbus:uid:{os.getuid()} (relayed by uid=" in done.stderr
    assert "may not call dev.kiki.tools.readAuditLog" in done.stderr


def test_busctl_introspects_tools1(gateway_stack: Stack) -> None:
    done = busctl(gateway_stack, "introspect", GATEWAY_BUS_NAME, GATEWAY_OBJECT_PATH)
    assert done.returncode == 0, done.stderr
    assert "dev.kiki.Tools1" in done.stdout
