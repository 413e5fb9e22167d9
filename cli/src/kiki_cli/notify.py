"""``kiki notify``: desktop notifications through the broker and the D-Bus gateway."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import orjson

from kiki_cli.common import fail, service_group
from kiki_cli.media import call, dump, shown
from libkiki.errors import KikiError
from libkiki.paths import TOOLS_SOCKET
from libkiki.tools import ToolClient


def register(sub: Any) -> None:
    _, cmds = service_group(
        sub,
        "notify",
        help="send and follow desktop notifications",
        description="Desktop notifications through the broker and the D-Bus gateway.",
        peer="the broker",
        socket_name=TOOLS_SOCKET,
    )
    send = cmds.add_parser("send", help="show a notification; prints its id")
    send.add_argument("summary")
    send.add_argument("body", nargs="?", default="")
    send.add_argument("--urgency", choices=("low", "normal", "critical"))
    send.add_argument("--icon")
    send.add_argument("--app-name")
    send.add_argument(
        "--action", action="append", default=[], metavar="KEY=LABEL", help="a button (repeatable)"
    )
    send.add_argument("--expire", type=int, help="milliseconds; 0: never; default: the server's")
    send.add_argument("--replace", type=int, help="the id of a notification to replace")
    send.add_argument("--json", action="store_true")
    send.set_defaults(func=run_send)
    ls = cmds.add_parser("list", help="other apps' recent notifications (yours to read only)")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=run_list)
    watch = cmds.add_parser(
        "watch", help="your notifications' actions and closes (--observed: other apps' ones)"
    )
    watch.add_argument("--observed", action="store_true")
    watch.add_argument("--json", action="store_true", help="one JSON object a line")
    watch.set_defaults(func=run_watch)


def run_send(args: argparse.Namespace) -> int:
    arguments: dict[str, Any] = {"summary": args.summary}
    if args.body:
        arguments["body"] = args.body
    for key, value in (
        ("urgency", args.urgency),
        ("icon", args.icon),
        ("appName", args.app_name),
        ("expireTimeoutMs", args.expire),
        ("replacesId", args.replace),
    ):
        if value is not None:
            arguments[key] = value
    actions = []
    for pair in args.action:
        key, sep, label = pair.partition("=")
        if not sep:
            print(f"kiki notify: --action takes KEY=LABEL, not {pair!r}")
            return 2
        actions.append({"key": key, "label": label})
    if actions:
        arguments["actions"] = actions
    try:
        answer = asyncio.run(call(args.socket, "dev.kiki.notify.notify", arguments))
    except KikiError as exc:
        return fail("notify", exc)
    if args.json:
        dump(answer)
    else:
        print(answer["id"])
    return 0


def run_list(args: argparse.Namespace) -> int:
    try:
        answer = asyncio.run(call(args.socket, "dev.kiki.notify.recent", {"limit": args.limit}))
    except KikiError as exc:
        return fail("notify", exc)
    if args.json:
        dump(answer)
        return 0
    for n in answer["notifications"]:
        body = f": {shown(n['body'])}" if n.get("body") else ""
        print(f"{n['at']}  {shown(n['appName'])}  {shown(n['summary'])}{body}")
    return 0


async def _watch(args: argparse.Namespace) -> None:
    nsid = (
        "dev.kiki.notify.subscribeObserved" if args.observed else "dev.kiki.notify.subscribeEvents"
    )
    async with ToolClient(args.socket) as client, client.subscribe(nsid) as stream:
        async for message in stream.messages():
            if args.json:
                print(orjson.dumps(message).decode(), flush=True)
            elif "notification" in message:
                n = message["notification"]
                print(f"{n['at']}  {shown(n['appName'])}  {shown(n['summary'])}", flush=True)
            else:
                kind = message["$type"].rpartition("#")[2]
                detail = shown(message.get("key") or message.get("reason", ""))
                print(f"{message['id']}  {kind}  {detail}", flush=True)


def run_watch(args: argparse.Namespace) -> int:
    try:
        asyncio.run(_watch(args))
    except KikiError as exc:
        return fail("notify", exc)
    except KeyboardInterrupt:
        return 0
    return 0
