"""``kiki media``, ``kiki notify`` and ``kiki desktop`` against the real broker and gateway, with
mpv, dunst and xdg-desktop-portal on the gateway's bus."""

from __future__ import annotations

import json
import select
import subprocess
import time
from typing import Any

import pytest

from kiki_cli.media import describe
from kikitest import VENV_BIN, dbus_fixtures
from kikitest.dbus_fixtures import Dunst, Stack

pytestmark = pytest.mark.interop

# The session's shared peers (kikitest.dbus_fixtures).
gateway_stack = dbus_fixtures.gateway_stack
mpv_player = dbus_fixtures.mpv_player
dunst = dbus_fixtures.dunst
portal = dbus_fixtures.portal


def kiki(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "kiki"), *args],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def until_json(stack: Stack, check: Any, *args: str) -> Any:
    """Run ``kiki ARGS --json`` until ``check`` holds for its answer (another process's state:
    no event to wait on); bounded."""
    deadline = time.monotonic() + 20
    while True:
        done = kiki(stack, *args, "--json")
        answer = json.loads(done.stdout) if done.returncode == 0 else None
        if answer is not None and check(answer):
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"kiki {' '.join(args)}: {done.stdout} {done.stderr}")
        time.sleep(0.05)


def test_media_list_pause_and_status(gateway_stack: Stack, mpv_player: Any) -> None:
    until_json(
        gateway_stack, lambda a: any(p["player"] == "mpv" for p in a["players"]), "media", "list"
    )
    assert kiki(gateway_stack, "media", "play", "--player", "mpv").returncode == 0
    until_json(
        gateway_stack, lambda a: a["player"]["status"] == "Playing", "media", "status", "-p", "mpv"
    )
    paused = kiki(gateway_stack, "media", "pause", "-p", "mpv")
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.startswith("mpv  ")
    until_json(
        gateway_stack, lambda a: a["player"]["status"] == "Paused", "media", "status", "-p", "mpv"
    )
    table = kiki(gateway_stack, "media", "list")
    assert table.stdout.splitlines()[0].split() == ["PLAYER", "STATUS", "ACTIVE", "IDENTITY"]
    assert kiki(gateway_stack, "media", "play", "-p", "mpv").returncode == 0


def test_media_errors_are_one_line_and_exit_1(gateway_stack: Stack) -> None:
    done = kiki(gateway_stack, "media", "next", "--player", "nosuchplayer")
    assert done.returncode == 1
    assert done.stderr.startswith("kiki media: ")
    assert "nosuchplayer" in done.stderr


def test_notify_send_prints_the_id(gateway_stack: Stack, dunst: Dunst) -> None:
    done = kiki(gateway_stack, "notify", "send", "Hello", "from the CLI", "--urgency", "low")
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 1
    listed = kiki(gateway_stack, "notify", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "notifications" in json.loads(listed.stdout)


def test_desktop_network_and_power(gateway_stack: Stack, portal: Any) -> None:
    network = until_json(gateway_stack, lambda a: "connectivity" in a, "desktop", "network")
    assert isinstance(network["available"], bool)
    power = kiki(gateway_stack, "desktop", "power")
    assert power.returncode == 0, power.stderr
    assert power.stdout.startswith("powerSaverEnabled: ")
    settings = kiki(gateway_stack, "desktop", "settings")
    assert settings.returncode == 1  # no portal backend in the test session
    assert "no backend provides it" in settings.stderr


def test_notify_watch_observed_prints_other_apps_notifications(
    gateway_stack: Stack, dunst: Dunst
) -> None:
    watch = subprocess.Popen(
        [str(VENV_BIN / "kiki"), "notify", "watch", "--observed", "--json"],
        env=gateway_stack.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watch.stdout is not None
        deadline = time.monotonic() + 20
        line = ""
        # The watch says nothing when it has subscribed: another app notifies until it prints.
        while not line:
            assert time.monotonic() < deadline, "kiki notify watch printed nothing"
            subprocess.run(
                ["notify-send", "--app-name=Chat", "ping"],
                env=gateway_stack.env,
                timeout=20,
                check=True,
            )
            ready, _, _ = select.select([watch.stdout], [], [], 0.2)
            if ready:
                line = watch.stdout.readline()
        event = json.loads(line)
        assert event["notification"]["appName"] == "Chat"
        assert event["notification"]["summary"] == "ping"
    finally:
        watch.terminate()
        watch.wait(timeout=20)


def test_other_apps_text_is_printed_escaped(gateway_stack: Stack, dunst: Dunst) -> None:
    # Another app's summary carries a terminal escape and a line of its own.
    summary = "evil\x1b[2J\nkiki: fake line"
    subprocess.run(
        ["notify-send", "--app-name=Prank", summary], env=gateway_stack.env, timeout=20, check=True
    )
    until_json(
        gateway_stack,
        lambda a: any(n["summary"] == summary for n in a["notifications"]),
        "notify",
        "list",
    )
    done = kiki(gateway_stack, "notify", "list")
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout
    (line,) = [line for line in done.stdout.splitlines() if "Prank" in line]
    assert line.endswith("evil\\x1b[2J\\nkiki: fake line")


def test_a_players_title_is_printed_escaped() -> None:
    now = {
        "player": {"player": "mpv", "status": "Playing"},
        "track": {"title": "song\x1b]0;owned\x07\r"},
        "positionUs": 0,
    }
    assert describe(now) == "mpv  Playing  0:00  song\\x1b]0;owned\\x07\\r"
