"""A hostile player against the real gateway (through the real broker): wrong types in its
metadata, a call it never answers, an exit mid-call, signals of the wrong shape and a flood.
The gateway stays up and keeps answering everyone else."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from kikitest import dbus_fixtures, until
from kikitest.dbus_fixtures import Stack, start_hostile, stop
from libkiki.constellation import GATEWAY_BUS_NAME, GATEWAY_OBJECT_PATH, SERVICE_INTERFACE
from libkiki.errors import ToolError
from libkiki.tools import ToolClient

pytestmark = pytest.mark.integration

# The session's shared peers (kikitest.dbus_fixtures).
gateway_stack = dbus_fixtures.gateway_stack


@pytest.fixture
def hostile(
    request: pytest.FixtureRequest, gateway_stack: Stack
) -> Iterator[subprocess.Popen[str]]:
    proc = start_hostile(gateway_stack.env, f"hostile{request.node.name[-6:].replace('_', '')}")
    yield proc
    stop(proc)


def name_of(proc: subprocess.Popen[str]) -> str:
    return str(proc.args[2])  # type: ignore[index]


async def info(stack: Stack) -> dict[str, Any]:
    bus = await MessageBus(bus_address=stack.address).connect()
    try:
        reply = await bus.call(
            Message(
                destination=GATEWAY_BUS_NAME,
                path=GATEWAY_OBJECT_PATH,
                interface=SERVICE_INTERFACE,
                member="GetInfo",
            )
        )
    finally:
        bus.disconnect()
    assert reply.message_type == MessageType.METHOD_RETURN, reply.body
    return {key: variant.value for key, variant in reply.body[0].items()}


async def found(tools: ToolClient, name: str) -> dict[str, Any] | None:
    try:
        answer: dict[str, Any] = await tools.call("dev.kiki.media.nowPlaying", {"player": name})
    except ToolError:
        return None
    return answer


async def test_wrong_types_are_dropped_and_the_good_fields_kept(
    hostile: subprocess.Popen[str], gateway_stack: Stack
) -> None:
    async with ToolClient(gateway_stack.tools, timeout=10) as tools:
        now = await until(lambda: found(tools, name_of(hostile)), "the gateway lists it")
    assert now["track"] == {"trackId": "/hostile/1", "album": "Good Album"}
    assert now["player"]["status"] == "Paused"
    assert now["player"]["volumePercent"] == 50
    assert now["positionUs"] == 1_000_000  # paused: where GetAll said
    assert (await info(gateway_stack))["counters"]["bad_values"] >= 2  # Metadata, Rate


async def test_a_call_never_answered_is_a_timeout_and_others_are_served_meanwhile(
    hostile: subprocess.Popen[str], gateway_stack: Stack
) -> None:
    name = name_of(hostile)
    async with ToolClient(gateway_stack.tools, timeout=10) as tools:
        await until(lambda: found(tools, name), "the gateway lists it")
        hanging = asyncio.ensure_future(tools.call("dev.kiki.media.play", {"player": name}))
        # While it waits, everyone else is answered.
        listed = await tools.call("dev.kiki.media.listPlayers")
        assert any(p["player"] == name for p in listed["players"])
        assert (await info(gateway_stack))["status"] == "ready"
        with pytest.raises(ToolError) as caught:
            await hanging
    assert caught.value.data == {"error": "Timeout"}
    assert "did not answer Play within 1s" in str(caught.value)


async def test_a_refused_capability_is_not_sent(
    hostile: subprocess.Popen[str], gateway_stack: Stack
) -> None:
    name = name_of(hostile)
    async with ToolClient(gateway_stack.tools, timeout=10) as tools:
        await until(lambda: found(tools, name), "the gateway lists it")
        with pytest.raises(ToolError) as caught:
            await tools.call("dev.kiki.media.next", {"player": name})
    assert caught.value.data == {"error": "NotSupported", "capability": "CanGoNext"}


async def test_a_player_gone_mid_call_is_peer_gone_and_leaves_the_list(
    hostile: subprocess.Popen[str], gateway_stack: Stack
) -> None:
    name = name_of(hostile)
    async with ToolClient(gateway_stack.tools, timeout=10) as tools:
        await until(lambda: found(tools, name), "the gateway lists it")
        with pytest.raises(ToolError) as caught:
            await tools.call("dev.kiki.media.pause", {"player": name})
        assert caught.value.data == {"error": "PeerGone"}
        assert hostile.wait(timeout=10) == 0

        async def gone() -> bool:
            listed = await tools.call("dev.kiki.media.listPlayers")
            return all(p["player"] != name for p in listed["players"])

        await until(gone, "the player leaves the list")


async def test_signals_of_the_wrong_shape_are_counted_not_fatal(
    hostile: subprocess.Popen[str], gateway_stack: Stack
) -> None:
    name = name_of(hostile)
    before = (await info(gateway_stack))["counters"].get("bad_signals", 0)
    async with ToolClient(gateway_stack.tools, timeout=10) as tools:
        await until(lambda: found(tools, name), "the gateway lists it")
        assert hostile.stdin is not None
        assert hostile.stdout is not None
        hostile.stdin.write("garbage\n")
        hostile.stdin.flush()
        assert hostile.stdout.readline().strip() == "sent"

        async def counted() -> bool:
            # Three of the wrong shape; the fourth, a Seeked with a string, is a bad value.
            counters = (await info(gateway_stack))["counters"]
            return bool(counters.get("bad_signals", 0) >= before + 3)

        await until(counted, "the bad signals counted")
        assert await found(tools, name) is not None


async def test_a_flood_reaches_subscribers_coalesced_with_the_last_state(
    hostile: subprocess.Popen[str], gateway_stack: Stack
) -> None:
    name = name_of(hostile)
    flood = 20_000
    async with ToolClient(gateway_stack.tools, timeout=10) as tools:
        await until(lambda: found(tools, name), "the gateway lists it")
        async with tools.subscribe(
            "dev.kiki.media.subscribePlayback", session=f"flood-{name}"
        ) as stream:
            messages = stream.messages()
            assert hostile.stdin is not None
            assert hostile.stdout is not None
            hostile.stdin.write(f"flood {flood}\n")
            hostile.stdin.flush()
            assert await asyncio.to_thread(hostile.stdout.readline) == "flooded\n"
            last = (flood - 1) % 100  # the volume of the last signal, in percent
            about_it = 0
            async for message in messages:
                player = message.get("nowPlaying", {}).get("player", {})
                if player.get("player") != name:
                    continue
                about_it += 1
                if player.get("volumePercent") == last:
                    break
    # Each message carries the state then: far fewer messages than signals.
    assert about_it < flood // 10


async def test_a_player_that_never_answers_getall_is_listed_after_the_deadline(
    gateway_stack: Stack,
) -> None:
    mute = start_hostile(gateway_stack.env, "mute", "mute")
    try:
        async with ToolClient(gateway_stack.tools, timeout=10) as tools:
            # Listed with what it said (nothing) once its GetAll timed out; its calls time out.
            now = await until(lambda: found(tools, "mute"), "the gateway lists it anyway")
            assert now["player"] == {"player": "mute", "status": "Stopped"}
            with pytest.raises(ToolError) as caught:
                await tools.call("dev.kiki.media.play", {"player": "mute"})
            assert caught.value.data == {"error": "Timeout"}
        assert (await info(gateway_stack))["counters"]["discovery_errors"] >= 2
    finally:
        stop(mute)


async def test_a_steady_flood_costs_a_subscriber_one_message_per_interval(
    hostile: subprocess.Popen[str], gateway_stack: Stack
) -> None:
    name = name_of(hostile)
    interval = 0.1  # the gateway's events_interval (its default)
    async with ToolClient(gateway_stack.tools, timeout=10) as tools:
        await until(lambda: found(tools, name), "the gateway lists it")
        async with tools.subscribe(
            "dev.kiki.media.subscribePlayback", session=f"steady-{name}"
        ) as stream:
            changes = 0

            async def count() -> None:
                nonlocal changes
                async for message in stream.messages():
                    player = message.get("nowPlaying", {}).get("player", {})
                    if player.get("player") == name:
                        changes += 1

            counting = asyncio.ensure_future(count())
            await asyncio.sleep(interval)  # the stream's first messages (the players there)
            assert hostile.stdin is not None
            assert hostile.stdout is not None
            start, before = time.monotonic(), changes
            hostile.stdin.write("rate 2000 2\n")
            hostile.stdin.flush()
            assert (await asyncio.to_thread(hostile.stdout.readline)).startswith("flooded")
            elapsed = time.monotonic() - start
            counting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await counting
    during = changes - before
    # About one message per interval (a turn's jitter aside), however many signals came: a
    # bound from the time the flood took, not a deadline.
    assert 2 <= during <= elapsed / interval * 1.5 + 3, (during, elapsed)
