"""``kiki desktop``: the desktop's settings, network and power state (xdg-desktop-portal),
through the broker and the D-Bus gateway."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from kiki_cli.common import fail, service_group
from kiki_cli.media import call, dump
from libkiki.errors import KikiError
from libkiki.paths import TOOLS_SOCKET

COMMANDS = {
    "settings": ("dev.kiki.portal.settings", "colour scheme, accent colour, contrast"),
    "network": ("dev.kiki.portal.networkStatus", "connectivity and whether it is metered"),
    "power": ("dev.kiki.portal.powerProfile", "whether power saving is on"),
}


def register(sub: Any) -> None:
    _, cmds = service_group(
        sub,
        "desktop",
        help="the desktop's settings, network and power",
        description="Desktop state from xdg-desktop-portal, through the broker and the gateway.",
        peer="the broker",
        socket_name=TOOLS_SOCKET,
    )
    for name, (nsid, text) in COMMANDS.items():
        cmd = cmds.add_parser(name, help=text)
        cmd.add_argument("--json", action="store_true")
        cmd.set_defaults(func=run, nsid=nsid)


def run(args: argparse.Namespace) -> int:
    try:
        answer = asyncio.run(call(args.socket, args.nsid, {}))
    except KikiError as exc:
        return fail("desktop", exc)
    if args.json:
        dump(answer)
        return 0
    for key, value in answer.items():
        if key != "raw":
            shown = str(value).lower() if isinstance(value, bool) else value
            print(f"{key}: {shown}")
    return 0
