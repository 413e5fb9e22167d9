"""``kiki session``: the sync relay's sessions (list, show, share, revoke, dump, watch).

It talks JSON-RPC to the relay's admin socket (``sync-relay-admin.sock`` in the runtime
directory; see the relay's README), never to the relay's code.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from pathlib import Path
from typing import Any

import orjson

from kiki_cli.common import fail, service_group
from kiki_cli.dashboard_link import dashboard_url
from libkiki.errors import InvalidParams, KikiError
from libkiki.paths import runtime_dir
from libkiki.rpc import connect_unix
from libkiki.sync import ADMIN_SOCKET

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """An argparse type: ``90``, ``90s``, ``15m``, ``1h``, ``7d``."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if not match or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(f"not a duration (90, 90s, 15m, 1h, 7d): {text!r}")
    return float(match[1]) * _UNITS[match[2] or "s"]


def register(sub: Any) -> None:
    _, cmds = service_group(
        sub,
        "session",
        help="list, share and inspect sync sessions",
        description="Talk to the sync relay on its admin socket.",
        peer="the sync relay's admin",
        socket_name=ADMIN_SOCKET,
    )
    cmds.add_parser("list", help="every session, live or stored").set_defaults(func=run_list)
    show = cmds.add_parser("show", help="one session: its clients and size")
    show.add_argument("name")
    show.set_defaults(func=run_show)
    share = cmds.add_parser("share", help="mint a token and print the join URL")
    share.add_argument("name")
    share.add_argument("--role", choices=("observer", "controller", "device"), default="observer")
    share.add_argument("--ttl", type=duration, default=3600.0, help="how long it holds (1h)")
    share.add_argument("--sub", default="", help="who it is for (default: uid:<you>)")
    share.add_argument("--json", action="store_true", help="url, token, jti and exp as JSON")
    share.add_argument(
        "--dashboard",
        action="store_true",
        help="print the web dashboard's URL (http://HOST:PORT/dashboard/#session=…&token=…)",
    )
    share.set_defaults(func=run_share)
    revoke = cmds.add_parser("revoke", help="revoke a token by its jti; closes who holds it")
    revoke.add_argument("name")
    revoke.add_argument("jti")
    revoke.set_defaults(func=run_revoke)
    dump = cmds.add_parser("dump", help="the session document as JSON")
    dump.add_argument("name")
    dump.set_defaults(func=run_dump)
    watch = cmds.add_parser("watch", help="print the document each time it changes")
    watch.add_argument("name")
    watch.add_argument("--interval", type=duration, default=0.5, help="how often to look (0.5)")
    watch.add_argument("--count", type=int, default=0, help="stop after N changes (0: never)")
    watch.set_defaults(func=run_watch)


def _socket(args: argparse.Namespace) -> Path:
    return args.socket or runtime_dir() / ADMIN_SOCKET


async def _call(args: argparse.Namespace, method: str, **params: Any) -> Any:
    async with connect_unix(_socket(args)) as conn:
        return await conn.request(f"dev.kiki.session.{method}", params)


def _run(args: argparse.Namespace, method: str, **params: Any) -> Any:
    return asyncio.run(_call(args, method, **params))


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


def run_list(args: argparse.Namespace) -> int:
    try:
        sessions = _run(args, "list")
    except KikiError as exc:
        return fail("session", exc)
    for s in sessions:
        state = f"live, {s['clients']} clients" if s["live"] else "hibernated"
        link = {True: "\tlinked upstream", False: "\tupstream unreachable"}.get(
            s.get("upstream"), ""
        )
        print(f"{s['name']}\t{state}\t{s['bytes']} bytes{link}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    try:
        print(_json(_run(args, "show", name=args.name)))
    except KikiError as exc:
        return fail("session", exc)
    return 0


def run_share(args: argparse.Namespace) -> int:
    try:
        shared = _run(args, "share", name=args.name, role=args.role, ttl=args.ttl, sub=args.sub)
    except KikiError as exc:
        return fail("session", exc)
    if args.dashboard:
        shared["dashboard"] = dashboard_url(shared["url"], args.name, shared["token"])
    if args.json:
        print(_json(shared))
    else:
        print(shared["dashboard"] if args.dashboard else shared["url"])
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    try:
        done = _run(args, "revoke", jti=args.jti, name=args.name)
    except KikiError as exc:
        return fail("session", exc)
    print(f"revoked {args.jti}; closed {done['closed']} connections")
    upstream = done.get("upstream", "not linked")
    if upstream == "confirmed":
        print("the edge confirmed the revocation")
    elif upstream == "pending":
        print("the edge did not confirm it yet: it is told again when the link is back")
    return 0


def run_dump(args: argparse.Namespace) -> int:
    try:
        print(_json(_run(args, "dump", name=args.name)))
    except KikiError as exc:
        return fail("session", exc)
    return 0


async def _watch(args: argparse.Namespace) -> int:
    last: Any = object()
    changes = 0
    async with connect_unix(_socket(args)) as conn:
        while True:
            doc = await conn.request("dev.kiki.session.dump", {"name": args.name})
            if doc != last:
                print(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode(), flush=True)
                last = doc
                changes += 1
                if args.count and changes >= args.count:
                    return 0
            await asyncio.sleep(args.interval)


def run_watch(args: argparse.Namespace) -> int:
    if args.count < 0:
        return fail("session", InvalidParams("--count must be 0 or more"))
    try:
        return asyncio.run(_watch(args))
    except KikiError as exc:
        return fail("session", exc)
