"""What the command groups that talk to one service's socket share."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from libkiki.errors import KikiError


def service_group(
    sub: Any, name: str, *, help: str, description: str, peer: str, socket_name: str
) -> tuple[argparse.ArgumentParser, Any]:
    """Add ``kiki NAME`` with ``--socket`` and a required sub-command; returns both parsers."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help, description=description)
    parser.add_argument(
        "--socket",
        type=Path,
        help=f"{peer}'s socket (default: {socket_name} in the runtime directory)",
    )
    cmds = parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)
    return parser, cmds


def fail(group: str, exc: KikiError) -> int:
    """Report ``exc`` the one way every command does; the exit status for it."""
    print(f"kiki {group}: {exc}", file=sys.stderr)
    return 1
