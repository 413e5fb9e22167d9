"""``kiki media``: the session's media players (MPRIS), through the broker and the D-Bus
gateway's ``dev.kiki.media.*`` tools."""

from __future__ import annotations

import argparse
import asyncio
import math
from typing import Any

import orjson

from kiki_cli.common import fail, service_group
from libkiki.errors import KikiError
from libkiki.paths import TOOLS_SOCKET
from libkiki.tools import ToolClient

# command: (tool, help)
ACTIONS = {
    "play": ("play", "start or resume playback"),
    "pause": ("pause", "pause playback"),
    "play-pause": ("playPause", "toggle play and pause"),
    "stop": ("stop", "stop playback"),
    "next": ("next", "skip to the next track"),
    "previous": ("previous", "go back to the previous track"),
}


def register(sub: Any) -> None:
    _, cmds = service_group(
        sub,
        "media",
        help="the session's media players",
        description="Media players (MPRIS) through the broker and the D-Bus gateway. Without "
        "--player, the active player: the one that most recently started playing, else the one "
        "whose status changed last, else the first seen.",
        peer="the broker",
        socket_name=TOOLS_SOCKET,
    )
    ls = cmds.add_parser("list", help="the players on the session bus")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=run_list)
    status = cmds.add_parser("status", help="what a player is playing, and where")
    _player(status)
    status.set_defaults(func=run_tool, tool="nowPlaying", build=lambda a: {})
    for name, (tool, text) in ACTIONS.items():
        action = cmds.add_parser(name, help=text)
        _player(action)
        action.set_defaults(func=run_tool, tool=tool, build=lambda a: {})
    seek = cmds.add_parser("seek", help="move by SECONDS (negative: back)")
    seek.add_argument("seconds", type=_seconds, help="how far, back when negative")
    _player(seek)
    seek.set_defaults(func=run_tool, tool="seek", build=lambda a: {"offsetUs": _us(a.seconds)})
    position = cmds.add_parser("position", help="jump to SECONDS in the current track")
    position.add_argument("seconds", type=_seconds)
    _player(position)
    position.set_defaults(
        func=run_tool, tool="setPosition", build=lambda a: {"positionUs": _us(a.seconds)}
    )
    volume = cmds.add_parser("volume", help="set the volume to PERCENT")
    volume.add_argument("percent", type=int)
    _player(volume)
    volume.set_defaults(
        func=run_tool, tool="setVolume", build=lambda a: {"volumePercent": a.percent}
    )
    open_ = cmds.add_parser("open", help="open and play URI")
    open_.add_argument("uri")
    _player(open_)
    open_.set_defaults(func=run_tool, tool="openUri", build=lambda a: {"uri": a.uri})


def _player(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--player", "-p", help="the MPRIS name (mpv, vlc, ...); default: the active one"
    )
    parser.add_argument("--json", action="store_true", help="the tool's answer as JSON")


def _seconds(text: str) -> float:
    """A number of seconds a track can be: finite, within 10^7 s either way (argparse's type)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or abs(value) > 1e7:
        raise argparse.ArgumentTypeError(f"must be a number of seconds within 1e7: {text!r}")
    return value


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


async def call(socket: Any, nsid: str, arguments: dict[str, Any]) -> Any:
    async with ToolClient(socket) as client:
        return await client.call(nsid, arguments)


def dump(value: Any) -> None:
    print(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def run_list(args: argparse.Namespace) -> int:
    try:
        answer = asyncio.run(call(args.socket, "dev.kiki.media.listPlayers", {}))
    except KikiError as exc:
        return fail("media", exc)
    if args.json:
        dump(answer)
        return 0
    players = answer["players"]
    width = max((len(shown(p["player"])) for p in players), default=6)
    print(f"{'PLAYER':<{width}}  {'STATUS':<8}  ACTIVE  IDENTITY")
    for p in players:
        active = "*" if p.get("active") else ""
        name, identity = shown(p["player"]), shown(p.get("identity", ""))
        print(f"{name:<{width}}  {p['status']:<8}  {active:<6}  {identity}")
    return 0


def run_tool(args: argparse.Namespace) -> int:
    arguments = args.build(args)
    if args.player:
        arguments["player"] = args.player
    try:
        answer = asyncio.run(call(args.socket, f"dev.kiki.media.{args.tool}", arguments))
    except KikiError as exc:
        return fail("media", exc)
    if args.json:
        dump(answer)
    else:
        print(describe(answer))
    return 0


def shown(text: Any) -> str:
    """``text`` for a terminal: what players and other apps send is theirs, so its control
    characters (an escape sequence, a newline starting a fake line) are printed escaped."""
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text)
    )


def _clock(us: int) -> str:
    seconds = us // 1_000_000
    return f"{seconds // 60}:{seconds % 60:02d}"


def describe(now: dict[str, Any]) -> str:
    """One line: player, status, position / length, title — artists."""
    player, track = now["player"], now.get("track") or {}
    where = _clock(now.get("positionUs", 0))
    if "lengthUs" in track:
        where += f" / {_clock(track['lengthUs'])}"
    title = track.get("title") or track.get("url") or ""
    if track.get("artists"):
        title += " — " + ", ".join(track["artists"])
    return f"{shown(player['player'])}  {player['status']}  {where}  {shown(title)}".rstrip()
