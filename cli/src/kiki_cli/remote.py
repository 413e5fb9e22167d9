"""``kiki remote``: a device seen and driven through its session, from anywhere.

The client of a session URL (``kiki session share NAME --role controller`` prints one; the
device relay's or the edge's): ``state`` prints the device's live state, ``call`` asks the
device to call one of its tools and prints the output, ``watch`` prints the state as it changes.
All of it is :class:`libkiki.session.SessionClient`; the device decides and records every call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from kiki_cli.common import fail, seconds
from libkiki.errors import InvalidParams, KikiError

TOKEN_ENV = "KIKI_SESSION_TOKEN"

EPILOG = f"""\
URL is a session's WebSocket URL, ws://HOST:PORT/session/NAME (the device's sync relay) or
wss://EDGE/session/NAME (the edge). The token comes from `kiki session share NAME --role
controller` (observer tokens read only): either in the URL (?token=...), or with --token, or in
${TOKEN_ENV}; given apart from the URL it travels as the connection's first message.

examples:
  kiki remote state "$(kiki session share kitchen)"
  kiki remote call ws://127.0.0.1:8765/session/kitchen dev.kiki.media.pause '{{}}' --token "$T"
  kiki remote watch "$URL" --json
"""


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "remote",
        help="see and drive a device through its session",
        description="Join a device's session as a remote agent: read its live state, ask it "
        "to call its tools, follow its changes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmds = parser.add_subparsers(dest="remote_command", metavar="COMMAND", required=True)

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        cmd: argparse.ArgumentParser = cmds.add_parser(
            name,
            help=help,
            description=description,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        cmd.add_argument("url", metavar="URL", help="the session's ws:// or wss:// URL")
        cmd.add_argument(
            "--token",
            default=os.environ.get(TOKEN_ENV) or None,
            help=f"the session token, when it is not in the URL (default: ${TOKEN_ENV})",
        )
        cmd.add_argument(
            "--connect-timeout",
            type=seconds,
            default=10.0,
            metavar="SECONDS",
            help="how long joining and syncing may take (10)",
        )
        return cmd

    state = command(
        "state", "print the device's live state", "Print the device's state as it is now."
    )
    state.add_argument("--json", action="store_true", help="the whole state as JSON")
    state.set_defaults(func=run_state)

    call = command(
        "call",
        "ask the device to call a tool; print its output",
        "Write an intent (the tool and its input) into the session and wait for the result "
        "the device writes: print the tool's output as JSON, or say why it failed (the "
        "device refused it, it expired, the tool failed). Exit status 1 then.",
    )
    call.add_argument("tool", metavar="TOOL", help="the tool's NSID, e.g. dev.kiki.media.pause")
    call.add_argument(
        "input", metavar="JSON", nargs="?", default="{}", help="the tool's input ({})"
    )
    call.add_argument(
        "--timeout",
        type=seconds,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the result (30); the device may still carry it out later",
    )
    call.add_argument(
        "--deadline",
        type=seconds,
        metavar="SECONDS",
        help="the device must not start it later than this from now (it answers 'expired')",
    )
    call.add_argument(
        "--id",
        dest="intent_id",
        metavar="ID",
        help="the intent's id (1-64 of A-Z a-z 0-9 _ -; default: a random one): the same id "
        "again, after a lost connection say, waits for that intent and runs nothing twice",
    )
    call.add_argument("--json", action="store_true", help="the output on one line")
    call.set_defaults(func=run_call)

    watch = command(
        "watch",
        "print the device's state as it changes",
        "Print each part of the device's state (screen, nowPlaying, notifications, ...) "
        "each time it changes, until interrupted or the session ends.",
    )
    watch.add_argument("--json", action="store_true", help='one {"key", "value"} per line')
    watch.add_argument("--count", type=int, default=0, help="stop after N changes (0: never)")
    watch.set_defaults(func=run_watch)


def _client(args: argparse.Namespace) -> Any:
    from libkiki.session import SessionClient

    return SessionClient(args.url, args.token, connect_timeout=args.connect_timeout)


def _run(args: argparse.Namespace, body: Any) -> int:
    try:
        status: int = asyncio.run(body)
    except KikiError as exc:
        return fail("remote", exc)
    return status


def _json(value: Any, *, indent: bool = True) -> str:
    option = orjson.OPT_SORT_KEYS | (orjson.OPT_INDENT_2 if indent else 0)
    return orjson.dumps(value, option=option).decode()


def summary(key: str, value: Any) -> str:
    """One line saying what a part of the device's state holds, for a person."""
    if value is None:
        return f"{key}: (gone)"
    if key == "screen" and isinstance(value, dict):
        apps = [a for a in value.get("apps", []) if isinstance(a, dict)]
        parts = [f"{a.get('appId', '?')} ({len(a.get('nodes', []))} nodes)" for a in apps]
        return f"screen: {', '.join(parts) or 'nothing'}"
    if key == "nowPlaying" and isinstance(value, dict):
        return f"nowPlaying: {_now_playing(value) or _json(value, indent=False)}"
    if isinstance(value, list) and key != "stale":
        if not value:
            return f"{key}: none"
        return f"{key}: {len(value)}, the last {_json(value[-1], indent=False)[:120]}"
    text = _json(value, indent=False)
    return f"{key}: {text if len(text) <= 160 else text[:157] + '...'}"


def _now_playing(value: dict[str, Any]) -> str:
    """``artists - title (status)`` of a ``dev.kiki.media.defs#nowPlaying``."""
    track = value.get("track")
    track = track if isinstance(track, dict) else {}
    artists = track.get("artists")
    who = ", ".join(str(a) for a in artists) if isinstance(artists, list) else ""
    said = " - ".join(part for part in (who, str(track.get("title") or "")) if part)
    player = value.get("player")
    status = player.get("status") if isinstance(player, dict) else None
    return f"{said} ({status})" if said and status else said


def run_state(args: argparse.Namespace) -> int:
    async def go() -> int:
        async with _client(args) as remote:
            state = remote.state()
        if args.json:
            print(_json(state))
        elif not state:
            print("the device has written no state in this session yet")
        else:
            for key in sorted(state):
                print(summary(key, state[key]))
        return 0

    return _run(args, go())


def run_call(args: argparse.Namespace) -> int:
    try:
        given = orjson.loads(args.input)
    except orjson.JSONDecodeError as exc:
        return fail("remote", InvalidParams(f"the input is not JSON: {exc}"))
    deadline = None
    if args.deadline is not None:
        deadline = datetime.now(UTC) + timedelta(seconds=args.deadline)

    async def go() -> int:
        async with _client(args) as remote:
            try:
                output = await remote.call(
                    args.tool,
                    given,
                    timeout=args.timeout,
                    deadline=deadline,
                    intent_id=args.intent_id,
                )
            except KikiError as exc:
                print(f"kiki remote: {args.tool}: {type(exc).__name__}: {exc}", file=sys.stderr)
                return 1
        print(_json(output, indent=not args.json))
        return 0

    return _run(args, go())


def run_watch(args: argparse.Namespace) -> int:
    if args.count < 0:
        return fail("remote", InvalidParams("--count must be 0 or more"))

    def show(key: str, value: Any) -> None:
        if args.json:
            print(_json({"key": key, "value": value}, indent=False), flush=True)
        else:
            print(summary(key, value), flush=True)

    async def go() -> int:
        seen = 0
        async with _client(args) as remote:
            changes = remote.changes()
            for key, value in sorted(remote.state().items()):
                show(key, value)
            async for key, value in changes:
                show(key, value)
                seen += 1
                if args.count and seen >= args.count:
                    return 0
        return 0

    return _run(args, go())
