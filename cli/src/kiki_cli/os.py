"""``kiki os``: the OS image through the updater (bootc): status, check, upgrade, switch,
rollback. Nothing reboots without ``--apply``.

Also the updater client the ``kiki app`` commands share: a call on ``updater.sock`` with its
MCP progress drawn on stderr (a terminal only) while a long operation runs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from kiki_cli.common import fail, service_group
from libkiki.errors import KikiError
from libkiki.paths import UPDATER_SOCKET, socket_path

NSID = "dev.kiki.update."


class ProgressBar:
    """An operation's MCP progress drawn on stderr while it runs, on a terminal only (piped or
    with ``--json`` nothing is drawn): ``[#########.....................]  30% pull 1234
    bytes``, the phase as the updater names it; the line is cleared at the end."""

    WIDTH = 30

    def __init__(self, wanted: bool) -> None:
        self.shown = wanted and sys.stderr.isatty()

    @property
    def on_progress(self) -> Callable[[dict[str, Any]], Awaitable[None]] | None:
        return self.draw if self.shown else None

    async def draw(self, said: dict[str, Any]) -> None:
        done, total = float(said.get("progress", 0)), float(said.get("total") or 100)
        filled = max(0, min(self.WIDTH, int(self.WIDTH * done / total)))
        bar = "#" * filled + "." * (self.WIDTH - filled)
        sys.stderr.write(f"\r\033[K[{bar}] {done:3.0f}% {said.get('message') or ''}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def updater_call(
    socket: Path | None, method: str, params: dict[str, Any], *, progress: bool = False
) -> Any:
    """Call ``dev.kiki.update.<method>``; with ``progress``, draw its progress on a terminal."""
    from libkiki.rpc import connect_unix

    bar = ProgressBar(progress)

    async def go() -> Any:
        async with connect_unix(socket or socket_path(UPDATER_SOCKET)) as conn:
            return await conn.request(
                NSID + method, params, timeout=float("inf"), on_progress=bar.on_progress
            )

    try:
        return asyncio.run(go())
    finally:
        bar.close()


def print_json(value: Any) -> None:
    print(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def operation_line(op: dict[str, Any]) -> str:
    text = f"{op['kind']} {op.get('appId') or op['target']}: {op['state']}"
    return text + (f" ({op['message']})" if op.get("message") else "")


def register(sub: Any) -> None:
    _, cmds = service_group(
        sub,
        "os",
        help="the OS image: status, upgrade, rollback (bootc)",
        description="Ask the updater (updater.sock) to run bootc. Nothing reboots without "
        "--apply. Exit status 0 on success, 1 when the updater or bootc refused or failed.",
        peer="the updater",
        socket_name=UPDATER_SOCKET,
    )
    status = cmds.add_parser("status", help="booted, staged and rollback deployments")
    status.set_defaults(func=run_status)
    check = cmds.add_parser("check", help="whether an update is available (bootc upgrade --check)")
    check.set_defaults(func=run_check)
    upgrade = cmds.add_parser("upgrade", help="stage the next image (bootc upgrade)")
    upgrade.set_defaults(func=run_upgrade)
    switch = cmds.add_parser("switch", help="stage another image (bootc switch)")
    switch.add_argument("ref", metavar="REF", help="a container image reference")
    switch.set_defaults(func=run_switch)
    rollback = cmds.add_parser("rollback", help="boot the rollback deployment next")
    rollback.set_defaults(func=run_rollback)
    for cmd in (status, check, upgrade, switch, rollback):
        cmd.add_argument("--json", action="store_true", help="machine-readable output")
    for cmd in (upgrade, switch, rollback):
        cmd.add_argument("--apply", action="store_true", help="reboot into it at once")


def _do(args: argparse.Namespace, method: str, params: dict[str, Any]) -> int:
    try:
        answer = updater_call(args.socket, method, params, progress=not args.json)
    except KikiError as exc:
        return fail("os", exc)
    if args.json:
        print_json(answer)
    else:
        print(operation_line(answer["operation"]))
    return 0


def run_status(args: argparse.Namespace) -> int:
    try:
        listed = updater_call(args.socket, "list", {})
        state = updater_call(args.socket, "status", {})
    except KikiError as exc:
        return fail("os", exc)
    shown = {"deployments": listed["deployments"], "rebootRequired": state["rebootRequired"]}
    if args.json:
        print_json(shown)
        return 0
    if not shown["deployments"]:
        print("no bootc deployments (not a bootc system)")
    for d in shown["deployments"]:
        role = next((r for r in ("booted", "staged", "rollback") if d[r]), "other")
        pinned = " (pinned)" if d["pinned"] else ""
        print(f"{role}{pinned}: {d.get('image', '(no image)')}")
        for key in ("version", "digest", "timestamp", "checksum"):
            if key in d:
                print(f"  {key}: {d[key]}")
    if shown["rebootRequired"]:
        print("a reboot is pending")
    return 0


def run_check(args: argparse.Namespace) -> int:
    return _do(args, "update", {"target": "os", "checkOnly": True})


def run_upgrade(args: argparse.Namespace) -> int:
    return _do(args, "update", {"target": "os", "apply": args.apply})


def run_switch(args: argparse.Namespace) -> int:
    return _do(args, "migrate", {"image": args.ref, "apply": args.apply})


def run_rollback(args: argparse.Namespace) -> int:
    return _do(args, "rollback", {"target": "os", "apply": args.apply})
