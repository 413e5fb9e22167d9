"""``kiki status``: every service's health, asked on its own channel."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import orjson

from kiki_cli.common import seconds
from kiki_cli.health import Where, probe_all
from kiki_cli.launcher.state import read_state
from libkiki.constellation import BY_NAME, DEFAULT_RELAY_HOST, DEFAULT_RELAY_PORT, SERVICES
from libkiki.errors import KikiError
from libkiki.paths import runtime_dir


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="ask every service for its health",
        description="Ask each Kiki service for its health on its own channel and print a table. "
        "Exit status 0 only when every service asked answered.",
    )
    p.add_argument("services", nargs="*", metavar="SERVICE", help="only these services")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--runtime-dir", type=Path, help="where the sockets are (default: as services)")
    p.add_argument(
        "--relay",
        type=_relay,
        help=f"sync relay host:port (default {DEFAULT_RELAY_HOST}:"
        f"{DEFAULT_RELAY_PORT}, or what `kiki up` recorded)",
    )
    p.add_argument("--timeout", type=seconds, default=3.0, help="seconds per service (default 3)")
    p.set_defaults(func=run)


def _relay(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not (sep and host.strip("[]") and port.isdigit() and 0 < int(port) < 65536):
        raise argparse.ArgumentTypeError(f"must be HOST:PORT, the port from 1 to 65535: {text!r}")
    return text


def where_from(args: argparse.Namespace) -> Where:
    rundir = args.runtime_dir or runtime_dir()
    state = read_state(rundir) or {}
    relay = args.relay
    if relay is None:
        recorded = state.get("services", {}).get("sync-relay", {}).get("address")
        relay = recorded or f"{DEFAULT_RELAY_HOST}:{DEFAULT_RELAY_PORT}"
    bus = state.get("busAddress") or os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    return Where(runtime_dir=rundir, relay=relay, bus_address=bus)


def run(args: argparse.Namespace) -> int:
    unknown = [name for name in args.services if name not in BY_NAME]
    if unknown:
        print(
            f"kiki status: unknown service {', '.join(unknown)} (known: {', '.join(BY_NAME)})",
            file=sys.stderr,
        )
        return 2
    specs = tuple(BY_NAME[n] for n in args.services) if args.services else SERVICES
    rundir = args.runtime_dir or runtime_dir()
    if rundir.exists() and not rundir.is_dir():
        print(f"kiki status: {rundir} is not a directory", file=sys.stderr)
        return 2
    where = where_from(args)
    results = asyncio.run(probe_all(specs, where, args.timeout))
    ok = all(not isinstance(r, KikiError) for r in results.values())
    if args.json:
        out = {
            name: {"ok": True, "info": r}
            if not isinstance(r, KikiError)
            else {"ok": False, "error": {"type": type(r).__name__, "message": str(r)}}
            for name, r in results.items()
        }
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0 if ok else 1
    rows = [("SERVICE", "STATE", "PID", "UPTIME", "STATUS")]
    for name, r in results.items():
        if isinstance(r, KikiError):
            rows.append((name, "down", "-", "-", str(r)))
        else:
            rows.append(
                (
                    name,
                    str(r.get("status", "?")),
                    str(r.get("pid", "?")),
                    f"{r.get('uptimeSeconds', 0)}s",
                    str(r.get("statusText", "")),
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4])
    return 0 if ok else 1
