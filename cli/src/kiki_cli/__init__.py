"""The ``kiki`` command line.

Each command group lives in its own module exposing ``register(subparsers)``; the parser it adds
sets ``func`` to a callable taking the parsed arguments and returning the exit status.

Only the module of the command being run is imported: the others are listed in ``kiki --help``
from :data:`GROUPS`, whose one-line helps a test holds equal to what each module registers. A
group's module pulls in what its commands need (JSON-RPC, FlatBuffers, the lexicon compiler),
and every start would pay for all of them otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

from kiki_cli.common import quiet_pipes

# Command groups, in the order ``kiki --help`` lists them, with their one-line help.
GROUPS: dict[str, str] = {
    "up": "start every service, as systemd would, in the foreground",
    "status": "ask every service for its health",
    "schema": "work with Lexicon schemas",
    "app": "validate and install apps",
    "tools": "list, call and audit tools",
    "events": "watch event streams live",
    "mcp": "serve the device's tools over MCP on stdin/stdout",
    "a11y": "the desktop's accessibility trees",
    "sensors": "list, watch and inspect sensors",
    "session": "list, share and inspect sync sessions",
    "remote": "see and drive a device through its session",
    "os": "the OS image: status, upgrade, rollback (bootc)",
    "agent": "export, import and move agents as deltas",
    "media": "the session's media players",
    "notify": "send and follow desktop notifications",
    "desktop": "the desktop's settings, network and power",
}


class _Version(argparse.Action):
    """``--version``, reading the version (importlib.metadata) only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("help", "show program's version number and exit")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("kiki-cli")
        except PackageNotFoundError:  # running from a source tree without an install
            found = "0.0.0"
        print(f"kiki {found}")
        parser.exit()


def command_of(argv: Sequence[str]) -> str | None:
    """The command group ``argv`` names: its first word that is not an option (the top-level
    options take no value) or the word after ``--``; None without one."""
    for i, word in enumerate(argv):
        if word == "--":
            return argv[i + 1] if i + 1 < len(argv) else None
        if not word.startswith("-"):
            return word
    return None


def build_parser(command: str | None = None, *, every: bool = False) -> argparse.ArgumentParser:
    """The parser, with the full sub-parsers of ``command`` (or of every group with ``every``)
    and a one-line entry for each other group."""
    parser = argparse.ArgumentParser(
        prog="kiki",
        description="Operate and inspect a Kiki device or developer constellation.",
    )
    parser.add_argument("--version", action=_Version)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group, help in GROUPS.items():
        if every or group == command:
            importlib.import_module(f"kiki_cli.{group}").register(sub)
        else:
            sub.add_parser(group, help=help)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run one command; a reader of its output that goes away ends it as it ends ``cat``."""
    with quiet_pipes():
        _main(argv)


def _main(argv: Sequence[str] | None) -> None:
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(command_of(words))
    args = parser.parse_args(words)
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
