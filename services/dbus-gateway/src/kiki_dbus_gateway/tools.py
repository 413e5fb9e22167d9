"""The gateway's tools on the broker: ``dev.kiki.media.*`` and the stream
``dev.kiki.media.subscribePlayback``.

The gateway connects to ``tools.sock`` as a tool provider (libkiki's :class:`ToolProvider`,
registering again whenever the broker comes back). Each tool picks its player by the rule in
:mod:`kiki_dbus_gateway.media`, refuses what the player says it cannot do (``Conflict``, data
``{"error": "NotSupported"}``), makes one call and answers the player's state as the gateway
knows it when the player has answered: what the player changes in consequence (its status
after ``play``) comes as ``PropertiesChanged``, which ``nowPlaying`` and the stream show as
soon as it arrives.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from dbus_fast import Variant
from dbus_fast.validators import is_object_path_valid

from kiki_dbus_gateway.media import PLAYER_IFACE, Player, Players
from kiki_dbus_gateway.mpris import MprisWatcher
from kiki_dbus_gateway.playback import NSID as PLAYBACK
from kiki_dbus_gateway.playback import PlaybackFeed
from libkiki.errors import InvalidParams
from libkiki.paths import TOOLS_SOCKET, socket_path
from libkiki.streams_provider import StreamContext
from libkiki.tools import ToolCall, ToolProvider

# tool: (MPRIS method, the capability it needs, what it does, for a refusal)
SIMPLE = {
    "play": ("Play", "CanPlay", "play"),
    "pause": ("Pause", "CanPause", "pause"),
    "playPause": ("PlayPause", "CanPause", "play or pause"),
    "stop": ("Stop", "CanControl", "stop"),
    "next": ("Next", "CanGoNext", "go to the next track"),
    "previous": ("Previous", "CanGoPrevious", "go to the previous track"),
}


def make_provider(players: Players, watcher: MprisWatcher, events_interval: float) -> ToolProvider:
    provider = ToolProvider(socket_path(TOOLS_SOCKET))

    def now_playing(player: Player) -> dict[str, Any]:
        return player.now_playing(time.monotonic())

    @provider.tool("dev.kiki.media.listPlayers")
    async def list_players(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        now = time.monotonic()
        found = players.listed()
        active = players.resolve(None).name if found else None
        return {"players": [{**p.describe(now), "active": p.name == active} for p in found]}

    @provider.tool("dev.kiki.media.nowPlaying")
    async def playing(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        return now_playing(players.resolve(args.get("player")))

    for tool, (member, capability, what) in SIMPLE.items():

        async def simple(
            args: dict[str, Any],
            call: ToolCall,
            member: str = member,
            capability: str = capability,
            what: str = what,
        ) -> dict[str, Any]:
            player = players.resolve(args.get("player"))
            player.require(capability, what)
            await watcher.call(player, PLAYER_IFACE, member, "", [])
            return now_playing(player)

        provider.tool(f"dev.kiki.media.{tool}")(simple)

    @provider.tool("dev.kiki.media.seek")
    async def seek(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        player = players.resolve(args.get("player"))
        player.require("CanSeek", "seek")
        await watcher.call(player, PLAYER_IFACE, "Seek", "x", [int(args["offsetUs"])])
        return now_playing(player)

    @provider.tool("dev.kiki.media.setPosition")
    async def set_position(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        player = players.resolve(args.get("player"))
        player.require("CanSeek", "seek")
        track_id = args.get("trackId") or player.track.get("trackId")
        if not isinstance(track_id, str) or not is_object_path_valid(track_id):
            raise InvalidParams(
                "trackId must be the current track's MPRIS id (an object path); "
                f"the player {player.name} has given none"
            )
        position = int(args["positionUs"])
        await watcher.call(player, PLAYER_IFACE, "SetPosition", "ox", [track_id, position])
        return now_playing(player)

    @provider.tool("dev.kiki.media.setVolume")
    async def set_volume(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        player = players.resolve(args.get("player"))
        player.require("CanControl", "change its volume")
        volume = Variant("d", int(args["volumePercent"]) / 100)
        await watcher.set_property(player, "Volume", volume)
        return now_playing(player)

    @provider.tool("dev.kiki.media.openUri")
    async def open_uri(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        player = players.resolve(args.get("player"))
        await watcher.call(player, PLAYER_IFACE, "OpenUri", "s", [str(args["uri"])])
        return now_playing(player)

    @provider.subscription(PLAYBACK)
    async def playback(params: dict[str, Any], stream: StreamContext) -> AsyncIterator[Any]:
        wake = asyncio.Event()
        feed = PlaybackFeed(players, wake.set)
        players.listeners.append(feed)
        if feed.pending:
            wake.set()
        try:
            while True:
                await wake.wait()
                wake.clear()
                for message in feed.take(time.monotonic()):
                    yield message  # waits while the broker is not reading: news merges
                # The bound on the rate: what comes meanwhile merges per player.
                await asyncio.sleep(events_interval)
        finally:
            players.listeners.remove(feed)

    return provider
