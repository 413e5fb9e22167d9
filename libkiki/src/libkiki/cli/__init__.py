"""The ``kiki`` command line.

Each command group lives in its own module exposing ``register(subparsers)``; the parser it adds
sets ``func`` to a callable taking the parsed arguments and returning the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from libkiki import __version__
from libkiki.cli.common import quiet_pipes

# Command groups, in the order ``kiki --help`` lists them.
GROUPS = ("up", "status", "schema", "app", "tools", "mcp", "a11y", "sensors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kiki",
        description="Operate and inspect a Kiki device or developer constellation.",
    )
    parser.add_argument("--version", action="version", version=f"kiki {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in GROUPS:
        try:
            module = importlib.import_module(f"libkiki.cli.{group}")
        except ModuleNotFoundError as exc:
            if exc.name != f"libkiki.cli.{group}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run one command; a reader of its output that goes away ends it as it ends ``cat``."""
    with quiet_pipes():
        _main(argv)


def _main(argv: Sequence[str] | None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help()
        raise SystemExit(2)
    try:
        status = args.func(args)
    except KeyboardInterrupt:
        status = 130
    raise SystemExit(status)
