"""The portal tools against the real xdg-desktop-portal (no backend installed) on the
gateway's bus: what the frontend answers itself, and a clear error for what needs a backend;
its memory warnings from a low-memory-monitor on the portal's (private) system bus."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from kikitest import dbus_fixtures, until
from kikitest.dbus_fixtures import Portal, Stack
from kikitest.lexicon_testdata import KIKI_LEXICONS
from libkiki.errors import ToolError
from libkiki.lexicon import Registry, generate
from libkiki.tools import ToolClient

pytestmark = pytest.mark.interop

# The session's shared peers (kikitest.dbus_fixtures).
gateway_stack = dbus_fixtures.gateway_stack
portal = dbus_fixtures.portal


@pytest.fixture
async def tools(gateway_stack: Stack, portal: Portal) -> Any:
    async with ToolClient(gateway_stack.tools, timeout=10) as client:

        async def registered() -> bool:
            return "dev.kiki.portal.networkStatus" in {t["name"] for t in await client.list()}

        await until(registered, "the gateway registered the portal tools")
        yield client


def busctl_get(stack: Stack, interface: str, member: str) -> str:
    done = subprocess.run(
        [
            "busctl",
            "--user",
            "call",
            "org.freedesktop.portal.Desktop",
            "/org/freedesktop/portal/desktop",
            interface,
            member,
        ],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    return done.stdout.strip()


async def test_network_status_is_the_portals(tools: ToolClient, gateway_stack: Stack) -> None:
    status = await tools.call("dev.kiki.portal.networkStatus")
    theirs = busctl_get(gateway_stack, "org.freedesktop.portal.NetworkMonitor", "GetAvailable")
    assert theirs == f"b {str(status['available']).lower()}"
    assert status["connectivity"] in ("local", "limited", "captive", "full")


async def test_power_profile_and_proxy(tools: ToolClient) -> None:
    power = await tools.call("dev.kiki.portal.powerProfile")
    assert isinstance(power["powerSaverEnabled"], bool)
    proxy = await tools.call("dev.kiki.portal.resolveProxy", {"uri": "http://example.com/"})
    assert proxy["proxies"] == ["direct://"]  # no proxy configured in the test session


async def test_trash_moves_the_file_to_the_trash(tools: ToolClient, gateway_stack: Stack) -> None:
    home = Path(gateway_stack.env["HOME"])
    victim = home / "old-notes.txt"
    victim.write_text("bye")
    assert await tools.call("dev.kiki.portal.trashFile", {"path": str(victim)}) == {"trashed": True}
    assert not victim.exists()
    trash = Path(gateway_stack.env.get("XDG_DATA_HOME", home / ".local/share")) / "Trash/files"
    assert (trash / "old-notes.txt").read_text() == "bye"
    with pytest.raises(ToolError) as caught:
        await tools.call("dev.kiki.portal.trashFile", {"path": str(victim)})
    assert caught.value.data == {"error": "NotFound"}


@pytest.mark.parametrize(
    ("nsid", "args"),
    [
        ("dev.kiki.portal.settings", {}),
        ("dev.kiki.portal.openUri", {"uri": "https://example.com/"}),
    ],
)
async def test_what_needs_a_backend_is_a_clear_error(
    tools: ToolClient, nsid: str, args: dict[str, Any]
) -> None:
    with pytest.raises(ToolError) as caught:
        await tools.call(nsid, args)
    assert caught.value.data == {"error": "NoBackend"}
    assert "no backend provides it" in str(caught.value)


def portal_bindings(tmp_path: Path) -> ModuleType:
    """The generated pydantic bindings of ``dev.kiki.portal.*`` (``kiki schema gen``)."""
    registry = Registry()
    assert registry.load_dir(KIKI_LEXICONS / "dev" / "kiki" / "portal") == []
    path = tmp_path / "portal_bindings.py"
    path.write_text(generate(registry, command="kiki schema gen"))
    spec = importlib.util.spec_from_file_location("portal_bindings", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["portal_bindings"] = module
    spec.loader.exec_module(module)
    return module


async def test_a_low_memory_warning_reaches_the_stream(
    tools: ToolClient, portal: Portal, tmp_path: Path
) -> None:
    # The system's low-memory-monitor -> GLib's GMemoryMonitor in the portal -> the portal's
    # MemoryMonitor.LowMemoryWarning on the session bus -> the gateway -> the broker's stream,
    # read as the lexicon's typed message.
    gen = portal_bindings(tmp_path)
    warning = gen.DevKikiPortalMemoryLowMemoryWarning
    message_type = gen.ENDPOINTS["dev.kiki.portal.memory"]["message"]
    async with tools.subscribe(
        "dev.kiki.portal.memory", message_type=message_type, session="low"
    ) as stream:
        messages = stream.messages()
        # The stream's listener on the gateway is registered some time after the broker said
        # subscribed: the monitor warns again until the first warning arrives.
        first = asyncio.ensure_future(anext(messages))
        async with asyncio.timeout(20):
            while not first.done():
                portal.low_memory_warning(50)
                await asyncio.wait({first}, timeout=0.2)
        assert isinstance(first.result(), warning)
        assert first.result().level == 50  # low
        portal.low_memory_warning(255)  # critical
        portal.low_memory_warning(100)  # medium
        levels: list[int] = []
        async with asyncio.timeout(20):
            while len(levels) < 2:
                message = await anext(messages)
                assert isinstance(message, warning)
                if message.level != 50:  # (the repeats of the first may still come)
                    levels.append(message.level)
    assert levels == [255, 100]
