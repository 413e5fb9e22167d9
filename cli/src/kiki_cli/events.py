"""``kiki events``: watch the device's event streams (lexicon subscriptions) through the broker."""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from kiki_cli.common import fail, service_group
from libkiki.errors import InvalidParams, KikiError
from libkiki.paths import TOOLS_SOCKET

USAGE = 2  # the exit status of a usage error, as argparse's
_WILDCARDS = frozenset("*?[")


def register(sub: Any) -> None:
    _, cmds = service_group(
        sub,
        "events",
        help="watch event streams live",
        description="Subscribe to event streams (the lexicons' subscriptions) through the tool "
        "broker on tools.sock.",
        peer="the broker",
        socket_name=TOOLS_SOCKET,
    )
    watch = cmds.add_parser(
        "watch",
        help="print the events of matching streams as they come",
        description="Subscribe to every stream whose NSID matches GLOB (shell-style: * ? [...]) "
        "and print each event on one line as it comes: its NSID, its sequence number and the "
        "message as JSON; lost messages, a provider going away or coming back, and each "
        "stream's end get a line of their own. A GLOB with a wildcard is matched against the "
        "subscription lexicons installed here, so a stream nobody serves yet is watched too, "
        "waiting for its provider ('kiki tools streams' lists those served now); "
        "an exact NSID is asked of the broker as it is. Parameters are key=value pairs, each "
        "value read as JSON when it parses, as a string otherwise. Runs until every stream has "
        "ended (status 0) or Ctrl-C (0); 1 when the broker cannot be reached, refuses a "
        "subscription or ends a stream with an error.",
    )
    watch.add_argument("glob", metavar="GLOB", help="an NSID, or an NSID pattern")
    watch.add_argument("pairs", nargs="*", metavar="key=value", help="the stream's parameters")
    watch.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line: {nsid, seq, message}, {nsid, lost}, "
        "{nsid, status, reason, interruptions} or {nsid, ended, message}",
    )
    watch.add_argument(
        "--lexicons",
        action="append",
        type=Path,
        metavar="DIR",
        help="lexicons to match GLOB against (repeatable; default: $KIKI_LEXICON_PATH, else "
        "Kiki's and installed apps')",
    )
    watch.set_defaults(func=run_watch)


class ArgumentsError(KikiError):
    """The command line does not make a watch: a usage error."""


def parse_params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ArgumentsError(f"{pair!r} is not key=value")
        if key in params:
            raise ArgumentsError(f"parameter {key!r} is given more than once")
        try:
            params[key] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            params[key] = raw
    return params


def has_wildcard(glob: str) -> bool:
    return not _WILDCARDS.isdisjoint(glob)


def matching_streams(glob: str, lexicons: list[Path] | None) -> list[str]:
    """The NSIDs of the subscription lexicons on the search path that ``glob`` matches."""
    from libkiki.lexicon.model import SubscriptionType
    from libkiki.lexicon.registry import Registry

    registry, _ = Registry.from_search_path(lexicons)
    return sorted(
        doc.id
        for doc in registry.documents()
        if isinstance(doc.defs.get("main"), SubscriptionType) and fnmatch.fnmatchcase(doc.id, glob)
    )


def _line(record: dict[str, Any], as_json: bool, text: str) -> None:
    if as_json:
        print(orjson.dumps(record).decode(), flush=True)
    else:
        print(text, flush=True)


def _stamp() -> str:
    now = time.time()
    return time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"


async def _show(stream: Any, as_json: bool) -> bool:
    """Print ``stream``'s items until it ends; whether it ended without an error."""
    from libkiki.tools import Event, Lost, Status

    nsid = stream.nsid
    try:
        async for item in stream:
            if isinstance(item, Event):
                message = orjson.dumps(item.message).decode()
                _line(
                    {"nsid": nsid, "seq": item.seq, "message": item.message},
                    as_json,
                    f"{_stamp()} {nsid} #{item.seq} {message}",
                )
            elif isinstance(item, Lost):
                _line(
                    {"nsid": nsid, "lost": item.count},
                    as_json,
                    f"{_stamp()} {nsid}: {item.count} messages lost (not read in time)",
                )
            elif isinstance(item, Status):
                why = f" ({item.reason})" if item.reason else ""
                _line(
                    {
                        "nsid": nsid,
                        "status": item.state,
                        "reason": item.reason,
                        "interruptions": item.interruptions,
                    },
                    as_json,
                    f"{_stamp()} {nsid}: {item.state}{why}",
                )
    except KikiError as exc:
        _ended(stream, as_json)
        print(f"kiki events: {nsid}: {exc}", file=sys.stderr, flush=True)
        return False
    _ended(stream, as_json)
    return True


def _ended(stream: Any, as_json: bool) -> None:
    ended = stream.ended
    if ended is None:
        return
    detail = f": {ended.message}" if ended.message else ""
    _line(
        {"nsid": stream.nsid, "ended": ended.reason, "message": ended.message},
        as_json,
        f"{_stamp()} {stream.nsid}: ended ({ended.reason}{detail})",
    )


async def _watch(args: argparse.Namespace, nsids: list[str], params: dict[str, Any]) -> int:
    from libkiki.tools import ToolClient

    status = 0
    async with ToolClient(args.socket) as client:
        streams = []
        for nsid in nsids:
            stream = client.subscribe(nsid, params=params)
            try:
                await stream.open()
            except InvalidParams as exc:
                if len(nsids) == 1:
                    raise
                # A lexicon installed here that the broker does not carry (or with other params).
                print(f"kiki events: {nsid}: skipped: {exc}", file=sys.stderr)
                continue
            streams.append(stream)
        if not streams:
            print("kiki events: the broker refused every matching stream", file=sys.stderr)
            return 1
        clean = await asyncio.gather(*(_show(s, args.json) for s in streams))
        if not all(clean):
            status = 1
    return status


def run_watch(args: argparse.Namespace) -> int:
    try:
        params = parse_params(args.pairs)
    except ArgumentsError as exc:
        fail("events", exc)
        return USAGE
    try:
        if has_wildcard(args.glob):
            nsids = matching_streams(args.glob, args.lexicons)
            if not nsids:
                print(
                    f"kiki events: no subscription lexicon matches {args.glob!r}", file=sys.stderr
                )
                return 1
        else:
            nsids = [args.glob]
        return asyncio.run(_watch(args, nsids, params))
    except KeyboardInterrupt:
        return 0
    except KikiError as exc:
        return fail("events", exc)
