"""The media tools against a real player: mpv with Debian's mpv-mpris on a private bus, through
the real broker and gateway, checked against what playerctl says of the same player."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from typing import Any

import pytest

from kikitest import dbus_fixtures, until
from kikitest.dbus_fixtures import Stack
from libkiki.errors import ToolError
from libkiki.tools import ToolClient

pytestmark = pytest.mark.interop

# The session's shared peers (kikitest.dbus_fixtures).
gateway_stack = dbus_fixtures.gateway_stack
mpv_player = dbus_fixtures.mpv_player


def playerctl(stack: Stack, *args: str) -> str:
    exe = shutil.which("playerctl")
    if exe is None:
        pytest.fail("playerctl is not installed (scripts/install-test-deps)")
    done = subprocess.run(
        [exe, "--player=mpv", *args],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    return done.stdout.strip()


async def state(tools: ToolClient) -> dict[str, Any]:
    answer: dict[str, Any] = await tools.call("dev.kiki.media.nowPlaying", {"player": "mpv"})
    return answer


@pytest.fixture
async def tools(gateway_stack: Stack, mpv_player: Any) -> Any:
    async with ToolClient(gateway_stack.tools, timeout=10) as client:

        async def registered() -> bool:
            names = {t["name"] for t in await client.list()}
            if "dev.kiki.media.play" not in names:
                return False
            players = await client.call("dev.kiki.media.listPlayers")
            return any(p["player"] == "mpv" for p in players["players"])

        await until(registered, "the gateway registered its tools and found mpv")
        # Every test starts from a playing first track.
        await client.call("dev.kiki.media.play", {"player": "mpv"})
        await until(lambda: playerctl(gateway_stack, "status") == "Playing", "mpv plays")
        yield client


async def test_the_gateway_sees_what_playerctl_sees(
    tools: ToolClient, gateway_stack: Stack
) -> None:
    listed = await tools.call("dev.kiki.media.listPlayers")
    mpv = next(p for p in listed["players"] if p["player"] == "mpv")
    assert mpv["identity"] == "mpv"
    assert (mpv["canSeek"], mpv["canPause"], mpv["canGoNext"]) == (True, True, True)
    now = await until(lambda: _playing(tools), "the gateway says mpv is playing")
    assert now["track"]["url"] == playerctl(gateway_stack, "metadata", "xesam:url")
    # playerctl prints an object path quoted
    assert repr(now["track"]["trackId"]) == playerctl(gateway_stack, "metadata", "mpris:trackid")


async def _playing(tools: ToolClient) -> dict[str, Any] | None:
    now = await state(tools)
    return now if now["player"]["status"] == "Playing" and "url" in now["track"] else None


async def test_pause_and_play_follow_the_player_and_the_position_holds_while_paused(
    tools: ToolClient, gateway_stack: Stack
) -> None:
    await tools.call("dev.kiki.media.pause", {"player": "mpv"})
    await until(lambda: playerctl(gateway_stack, "status") == "Paused", "playerctl sees Paused")
    paused = await until(
        lambda: _with_status(tools, "Paused"), "the gateway learns of the pause (no polling)"
    )
    again = await state(tools)
    assert again["positionUs"] == paused["positionUs"]  # not extrapolated while paused

    # A third party resumes it: the gateway follows PropertiesChanged.
    playerctl(gateway_stack, "play")
    await until(lambda: _with_status(tools, "Playing"), "the gateway learns of playerctl's play")


async def _with_status(tools: ToolClient, status: str) -> dict[str, Any] | None:
    now = await state(tools)
    return now if now["player"]["status"] == status else None


async def test_set_position_lands_where_playerctl_says(
    tools: ToolClient, gateway_stack: Stack
) -> None:
    await tools.call("dev.kiki.media.pause", {"player": "mpv"})
    paused = await until(lambda: _with_status(tools, "Paused"), "paused")
    # Forward of where it is: the tone is generated (lavfi), and mpv, shared by the whole run,
    # may have played for minutes by now; a generated stream does not seek back that far.
    target = paused["positionUs"] + 30_000_000

    # A player ignores SetPosition naming a track it just left (MPRIS): right after another
    # test's `next` the gateway's view can lag, so ask again until it lands.
    async def moved() -> dict[str, Any] | None:
        now = await state(tools)
        return now if abs(now["positionUs"] - target) < 1_000_000 else None

    async def set_and_moved() -> dict[str, Any] | None:
        await tools.call("dev.kiki.media.setPosition", {"player": "mpv", "positionUs": target})
        with contextlib.suppress(AssertionError):
            return await until(moved, "the position follows Seeked", within=2.0)  # type: ignore[no-any-return]
        return None

    now = await until(set_and_moved, "the position follows Seeked")
    theirs = float(playerctl(gateway_stack, "position")) * 1e6
    assert abs(theirs - now["positionUs"]) < 1_000_000
    await tools.call("dev.kiki.media.seek", {"player": "mpv", "offsetUs": 10_000_000})

    async def forward() -> dict[str, Any] | None:
        now = await state(tools)
        return now if abs(now["positionUs"] - target - 10_000_000) < 1_000_000 else None

    await until(forward, "a relative seek moves it on")


async def test_volume_is_what_playerctl_reads(tools: ToolClient, gateway_stack: Stack) -> None:
    await tools.call("dev.kiki.media.setVolume", {"player": "mpv", "volumePercent": 40})
    await until(lambda: playerctl(gateway_stack, "volume").startswith("0.4"), "playerctl reads 0.4")

    async def heard() -> bool:
        return bool((await state(tools))["player"].get("volumePercent") == 40)

    await until(heard, "the gateway's state has the volume")
    await tools.call("dev.kiki.media.setVolume", {"player": "mpv", "volumePercent": 100})


async def test_next_changes_the_track(tools: ToolClient, gateway_stack: Stack) -> None:
    before = (await state(tools))["track"]["url"]
    await tools.call("dev.kiki.media.next", {"player": "mpv"})

    async def other() -> bool:
        return (await state(tools))["track"].get("url") not in (None, before)

    await until(other, "the next track's metadata")
    assert (await state(tools))["track"]["url"] == playerctl(gateway_stack, "metadata", "xesam:url")


async def test_a_player_by_a_name_no_one_has_is_no_player(tools: ToolClient) -> None:
    with pytest.raises(ToolError) as caught:
        await tools.call("dev.kiki.media.play", {"player": "nosuchplayer"})
    assert caught.value.data == {"error": "NoPlayer"}


async def test_the_stream_starts_with_the_players_and_follows_a_third_party(
    tools: ToolClient, gateway_stack: Stack
) -> None:
    async with tools.subscribe(
        "dev.kiki.media.subscribePlayback", session="first-players"
    ) as stream:
        messages = stream.messages()
        first = await anext(messages)
        assert first["$type"].endswith("#playerAppeared")
        assert first["nowPlaying"]["player"]["player"] == "mpv"
        playerctl(gateway_stack, "pause")
        async for message in messages:
            changed = message["$type"].endswith("#playerChanged")
            if changed and message["nowPlaying"]["player"]["status"] == "Paused":
                break
