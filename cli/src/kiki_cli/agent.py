"""``kiki agent``: move an agent (its code and its state) between updaters as deltas.

``export`` and ``import`` go through one updater each; ``move`` exports from this device's
updater into a directory and imports it into another updater's socket (another device's, as
reached here: a forwarded socket, or a second constellation on this machine), then retires the
source's copy unless ``--keep``. Each draws the updater's progress on a terminal, as ``kiki app
install`` does; nothing with ``--json`` or when stderr is not a terminal."""

from __future__ import annotations

import argparse
import hashlib
import tempfile
from pathlib import Path
from typing import Any

from kiki_cli.app import call_with_directory
from kiki_cli.common import fail, service_group
from kiki_cli.os import operation_line, print_json, updater_call
from libkiki.errors import KikiError
from libkiki.paths import UPDATER_SOCKET


def register(sub: Any) -> None:
    _, cmds = service_group(
        sub,
        "agent",
        help="export, import and move agents as deltas",
        description="Agents' code and state are OSTree commits; a move sends static delta "
        "files of both, signed, checked on arrival. Exit status 0 on success, 1 otherwise.",
        peer="the updater",
        socket_name=UPDATER_SOCKET,
    )
    export = cmds.add_parser("export", help="write an agent's deltas into a directory")
    export.add_argument("agent", metavar="AGENT")
    export.add_argument("--out", type=Path, required=True, metavar="DIR")
    export.add_argument("--destination", default=None, help="who it is for (delta base)")
    export.add_argument("--full", action="store_true", help="deltas from nothing")
    export.set_defaults(func=run_export)
    imp = cmds.add_parser("import", help="deploy an agent from a directory of deltas")
    imp.add_argument("agent", metavar="AGENT")
    imp.add_argument("source", type=Path, metavar="DIR")
    imp.set_defaults(func=run_import)
    move = cmds.add_parser("move", help="export here, import into another updater")
    move.add_argument("agent", metavar="AGENT")
    move.add_argument(
        "--to", type=Path, required=True, metavar="SOCKET", help="the other updater's socket"
    )
    move.add_argument("--full", action="store_true", help="the other side has no copy yet")
    move.add_argument("--keep", action="store_true", help="keep the source's copy")
    move.set_defaults(func=run_move)
    for cmd in (export, imp, move):
        cmd.add_argument("--json", action="store_true", help="machine-readable output")


def _show(args: argparse.Namespace, answer: dict[str, Any]) -> None:
    if args.json:
        print_json(answer)
    else:
        op = answer["operation"]
        size = f", {op['bytes']:,} bytes" if op.get("bytes") else ""
        print(operation_line(op) + size)


def _call(
    args: argparse.Namespace, socket: Path | None, method: str, params: dict[str, Any], at: Path
) -> Any:
    """``method`` with the directory ``at`` passed; its progress drawn as ``kiki app install``
    draws it (``os.ProgressBar``: on a terminal only, never with ``--json``)."""
    return call_with_directory(socket, method, params, at, progress=not args.json)


def run_export(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)  # the caller's own, made as the caller
    params: dict[str, Any] = {"appId": args.agent, "out": str(args.out.resolve())}
    if args.destination:
        params["destination"] = args.destination
    if args.full:
        params["full"] = True
    try:
        _show(args, _call(args, args.socket, "exportAgent", params, args.out))
    except KikiError as exc:
        return fail("agent", exc)
    return 0


def run_import(args: argparse.Namespace) -> int:
    params = {"appId": args.agent, "source": str(args.source.resolve())}
    try:
        _show(args, _call(args, args.socket, "importAgent", params, args.source))
    except KikiError as exc:
        return fail("agent", exc)
    return 0


def _name(socket: Path) -> str:
    """The destination's name for the delta base: the other updater, by its socket."""
    return "sock-" + hashlib.sha256(str(socket.resolve()).encode()).hexdigest()[:16]


def run_move(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="kiki-agent-") as tmp:
        try:
            out = _call(
                args,
                args.socket,
                "exportAgent",
                {"appId": args.agent, "out": tmp, "destination": _name(args.to), "full": args.full},
                Path(tmp),
            )
            into = _call(
                args, args.to, "importAgent", {"appId": args.agent, "source": tmp}, Path(tmp)
            )
            if not args.keep:
                updater_call(
                    args.socket,
                    "remove",
                    {"target": "agent", "appId": args.agent},
                    progress=not args.json,
                )
        except KikiError as exc:
            return fail("agent", exc)
    result = {"export": out["operation"], "import": into["operation"], "kept": args.keep}
    if args.json:
        print_json(result)
    else:
        print(
            f"moved {args.agent}: {out['operation']['bytes']:,} bytes sent"
            + ("" if args.keep else "; the source's copy retired")
        )
    return 0
