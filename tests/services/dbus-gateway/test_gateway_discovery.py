"""Players that come and go faster than their discovery, on a real dbus-daemon: the gateway
follows the owner changes in the order the bus tells them, whatever its GetAll calls do."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from kiki_dbus_gateway.media import Players
from kiki_dbus_gateway.mpris import MprisWatcher
from kikitest import dbus_fixtures, until
from kikitest.dbus_fixtures import Stack

pytestmark = pytest.mark.integration

bare_bus = dbus_fixtures.bare_bus

PREFIX = "org.mpris.MediaPlayer2."


@pytest.fixture
async def watched(bare_bus: Stack) -> AsyncIterator[tuple[Players, MessageBus]]:
    """A watcher on its own connection, and a player connection that answers no call."""
    gateway = await MessageBus(bus_address=bare_bus.address).connect()
    player = await MessageBus(bus_address=bare_bus.address).connect()
    player.add_message_handler(lambda m: m.message_type == MessageType.METHOD_CALL or None)
    players = Players(4)
    watcher = MprisWatcher(gateway, players, 2, Counter())
    await watcher.start()
    yield players, player
    await watcher.stop()
    player.disconnect()
    gateway.disconnect()


def name_request(member: str, name: str) -> Message:
    return Message(
        destination="org.freedesktop.DBus",
        path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus",
        member=member,
        signature="su" if member == "RequestName" else "s",
        body=[name, 0] if member == "RequestName" else [name],
    )


async def spin(player: MessageBus, name: str, turns: int) -> None:
    """Take and release ``name`` ``turns`` times, without waiting between: the watcher reads
    the owner changes together."""
    for turn in range(turns):
        player.send(name_request("RequestName", name))
        player.send(name_request("ReleaseName", name))
        if turn % 10 == 9 or turn == turns - 1:  # (dbus-fast's writer wants a pause now and then)
            await player.call(name_request("GetNameOwner", "org.freedesktop.DBus"))


async def test_a_player_gone_before_its_discovery_leaves_no_ghost(
    watched: tuple[Players, MessageBus],
) -> None:
    players, player = watched
    await spin(player, PREFIX + "ghost", 20)
    await player.request_name(PREFIX + "stays")
    # The last change the bus told: only "stays" has an owner. (Its GetAll times out after
    # 2 s, then it is listed: a ghost's discovery, older, would have ended before.)
    await until(lambda: players.listed(), "the player that stays is listed")
    assert sorted(players.by_name) == ["stays"]
    assert [p.name for p in players.listed()] == ["stays"]


async def test_a_name_taken_and_released_in_a_loop_costs_one_discovery(
    watched: tuple[Players, MessageBus],
) -> None:
    players, player = watched
    before = len(asyncio.all_tasks())
    await spin(player, PREFIX + "spin", 500)
    await asyncio.sleep(0.05)  # the cancelled discoveries end on the loop's next turns
    # Each turn's discovery is cancelled when the name goes: none waits for its deadline (2 s).
    assert len(asyncio.all_tasks()) <= before + 2
    assert "spin" not in players.by_name
