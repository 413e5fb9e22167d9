"""``kiki up``: run the whole constellation in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import grp
import sys
from pathlib import Path
from typing import Any

from kiki_cli.common import reader_gone, when_reader_goes
from kiki_cli.launcher.dashboard import DEFAULT_SESSION
from kiki_cli.launcher.supervisor import Supervisor, UpConfig
from libkiki.constellation import BY_NAME, DEFAULT_RELAY_HOST, DEFAULT_RELAY_PORT, SERVICES
from libkiki.paths import runtime_dir, state_dir


def register(sub: Any) -> None:
    p = sub.add_parser(
        "up",
        help="start every service, as systemd would, in the foreground",
        description="Start the Kiki services as child processes the way systemd runs them "
        "(pre-bound sockets via LISTEN_FDS, NOTIFY_SOCKET readiness, watchdog), print a table "
        "when all are ready, restart any that crash, and stop all cleanly on Ctrl-C or SIGTERM.",
    )
    p.add_argument(
        "services",
        nargs="*",
        metavar="SERVICE",
        help=f"only these services (default: all of {', '.join(BY_NAME)})",
    )
    p.add_argument(
        "--runtime-dir",
        type=Path,
        help="socket directory (default: $KIKI_RUNTIME_DIR, /run/kiki as root, else "
        "$XDG_RUNTIME_DIR/kiki)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        help="state directory (default: $KIKI_STATE_DIR, /var/lib/kiki as root, else "
        "$XDG_STATE_HOME/kiki)",
    )
    p.add_argument("--relay-host", default=DEFAULT_RELAY_HOST, help="sync relay address")
    p.add_argument(
        "--relay-port",
        type=int,
        default=DEFAULT_RELAY_PORT,
        help="sync relay port; 0 picks a free one (default: %(default)s)",
    )
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for each service's READY=1 (default: %(default)s)",
    )
    p.add_argument(
        "--watchdog",
        type=float,
        default=20.0,
        help="WATCHDOG_USEC given to services, in seconds (default: %(default)s)",
    )
    p.add_argument(
        "--group",
        metavar="NAME",
        help="a group whose members may connect to the sockets too, like the device's kiki "
        "group (default: only you; the directory is 0750 and the sockets 0660 either way)",
    )
    p.add_argument(
        "--no-demo",
        dest="demo",
        action="store_false",
        help="start no demo: neither the demo tool provider and app nor, in a desktop session "
        "(its own session bus), the AT-SPI bridge that publishes the session's apps",
    )
    p.add_argument(
        "--session",
        default=DEFAULT_SESSION,
        help="the sync session the relay links to this device; its dashboard's URL, with a "
        "controller token, ends the start (default: %(default)s)",
    )
    p.add_argument(
        "--no-dashboard",
        dest="dashboard",
        action="store_false",
        help="no device link in the sync relay, no broker policy for it, no dashboard URL",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from libkiki.sync.tokens import valid_session_name  # jwt: only when kiki up runs

    if not valid_session_name(args.session):
        print(f"kiki up: not a session name: {args.session!r}", file=sys.stderr)
        return 2
    unknown = [n for n in args.services if n not in BY_NAME]
    if unknown:
        print(f"kiki up: unknown service {', '.join(unknown)} (known: {', '.join(BY_NAME)})")
        return 2
    services = tuple(BY_NAME[n] for n in args.services) if args.services else SERVICES
    gid = None
    if args.group is not None:
        try:
            gid = grp.getgrnam(args.group).gr_gid
        except KeyError:
            print(f"kiki up: no group named {args.group}", file=sys.stderr)
            return 2
    config = UpConfig(
        # Resolved here, not when the parser is built: every `kiki` command builds it, and a
        # user without a home directory must still be able to run the others.
        runtime_dir=args.runtime_dir or runtime_dir(),
        state_dir=args.state_dir or state_dir(),
        relay_host=args.relay_host,
        relay_port=args.relay_port,
        services=services,
        ready_timeout=args.ready_timeout,
        watchdog_sec=args.watchdog,
        demo=args.demo,
        gid=gid,
        session=args.session if args.dashboard else None,
    )
    supervisor = Supervisor(config)
    went = False

    def stop_in_order() -> None:
        # `kiki up | head -1`: the reader is gone, but the services are ours to stop (in
        # reverse order, their sockets and the state file removed) before ending as cat does.
        nonlocal went
        went = True
        supervisor.request_stop()

    with when_reader_goes(stop_in_order):
        status = asyncio.run(supervisor.run())
    if went:
        reader_gone()
    return status
