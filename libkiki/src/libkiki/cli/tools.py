"""``kiki tools``: list, call and audit the device's tools through the broker."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import deque
from pathlib import Path
from typing import Any

import orjson

from libkiki.cli.common import fail, service_group
from libkiki.errors import KikiError, ToolError
from libkiki.tools import ToolClient

AUDIT_TOOL = "dev.kiki.tools.readAuditLog"


def register(sub: Any) -> None:
    _, cmds = service_group(
        sub,
        "tools",
        help="list, call and audit tools",
        description="Talk to the tool broker on tools.sock.",
        peer="the broker",
        socket_name="tools.sock",
    )

    ls = cmds.add_parser("list", help="list the tools you may see")
    ls.add_argument("--json", action="store_true", help="the MCP tool descriptors as JSON")
    ls.set_defaults(func=run_list)

    call = cmds.add_parser(
        "call",
        help="call a tool",
        description="Call a tool by NSID. Arguments come from --json, or from key=value pairs "
        'where each value is read as JSON when it parses (3, true, [1,2], {"a":1}) and as a '
        "string otherwise.",
    )
    call.add_argument("nsid")
    call.add_argument("pairs", nargs="*", metavar="key=value")
    call.add_argument(
        "--json",
        dest="json_args",
        metavar="ARGS",
        help="arguments as one JSON object ('-' reads it from stdin)",
    )
    call.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    call.set_defaults(func=run_call)

    log = cmds.add_parser("log", help="read the audit log of tool calls")
    log.add_argument("--limit", type=int, default=50, help="entries to show (default 50)")
    log.add_argument("--follow", "-f", action="store_true", help="keep printing new entries")
    log.add_argument(
        "--verify", action="store_true", help="check the hash chain; exit 1 when it is broken"
    )
    log.add_argument(
        "--file",
        type=Path,
        help="read an audit.jsonl file instead of asking the "
        "broker (with --verify, checks it offline)",
    )
    log.add_argument("--json", action="store_true", help="one JSON entry per line")
    log.set_defaults(func=run_log)


def _fail(exc: KikiError) -> int:
    return fail("tools", exc)


def run_list(args: argparse.Namespace) -> int:
    async def go() -> list[dict[str, Any]]:
        async with ToolClient(args.socket) as client:
            return await client.list()

    try:
        tools = asyncio.run(go())
    except KikiError as exc:
        return _fail(exc)
    if args.json:
        print(orjson.dumps(tools, option=orjson.OPT_INDENT_2).decode())
        return 0
    width = max((len(t["name"]) for t in tools), default=4)
    for t in tools:
        kind = "query" if t.get("annotations", {}).get("readOnlyHint") else "procedure"
        desc = (t.get("description") or "").splitlines()[0] if t.get("description") else ""
        print(f"{t['name']:<{width}}  {kind:<9}  {desc}")
    return 0


def parse_arguments(json_args: str | None, pairs: list[str]) -> dict[str, Any]:
    if json_args is not None:
        text = sys.stdin.read() if json_args == "-" else json_args
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise KikiError(f"--json is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise KikiError("--json must be a JSON object")
        return value
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise KikiError(f"{pair!r} is not key=value")
        try:
            out[key] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            out[key] = raw
    return out


def run_call(args: argparse.Namespace) -> int:
    try:
        arguments = parse_arguments(args.json_args, args.pairs)
    except KikiError as exc:
        return _fail(exc)

    async def go() -> Any:
        async with ToolClient(args.socket) as client:
            return await client.call(args.nsid, arguments, timeout=args.timeout)

    try:
        result = asyncio.run(go())
    except ToolError as exc:
        print(f"kiki tools: {args.nsid} failed: {exc}", file=sys.stderr)
        return 1
    except KikiError as exc:
        return _fail(exc)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


def _show(entry: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(orjson.dumps(entry).decode(), flush=True)
        return
    caller = entry.get("caller", {})
    who = f"uid={caller.get('uid')} pid={caller.get('pid')}"
    if caller.get("appId"):
        who += f" app={caller['appId']}"
    code = f" ({entry['code']})" if "code" in entry else ""
    print(
        f"{entry.get('seq'):>6} {entry.get('time')} {entry.get('tool')} "
        f"{entry.get('outcome')}{code} {entry.get('durationUs', 0) / 1000:.1f}ms {who}",
        flush=True,
    )


def run_log(args: argparse.Namespace) -> int:
    if args.file is not None:
        return _log_file(args)
    try:
        return asyncio.run(_log_remote(args))
    except KikiError as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        return 0


async def _log_remote(args: argparse.Namespace) -> int:
    async with ToolClient(args.socket) as client:
        # The log is read oldest first; keep the last `limit` entries of the pages.
        tail: deque[dict[str, Any]] = deque(maxlen=max(args.limit, 0))
        cursor = 0
        problems: list[str] = []
        while True:
            page: dict[str, Any] = await client.call(
                AUDIT_TOOL, {"cursor": cursor, "limit": 1000, "verify": args.verify}
            )
            problems = page.get("problems", problems)
            tail.extend(page["entries"])
            cursor = page.get("cursor", cursor)
            if len(page["entries"]) < 1000:
                break
        for entry in tail:
            _show(entry, args.json)
        while args.follow:
            await asyncio.sleep(1.0)  # a person watching: a second between polls is plenty
            page = await client.call(AUDIT_TOOL, {"cursor": cursor, "limit": 1000})
            for entry in page["entries"]:
                _show(entry, args.json)
            cursor = page.get("cursor", cursor)
    return _report(problems) if args.verify else 0


def _log_file(args: argparse.Namespace) -> int:
    # Imported here: the broker's package is on a device, not necessarily beside every CLI.
    try:
        from kiki_tool_broker.audit import read_entries, verify
    except ImportError:
        print("kiki tools: --file needs the kiki-tool-broker package", file=sys.stderr)
        return 1
    path: Path = args.file
    if not path.exists():
        print(f"kiki tools: {path} does not exist", file=sys.stderr)
        return 1
    for entry in read_entries(path, last=args.limit):
        _show(entry, args.json)
    if args.verify:
        return _report([str(p) for p in verify(path, path.with_name("audit.head"))])
    return 0


def _report(problems: list[str]) -> int:
    if problems:
        for problem in problems:
            print(f"audit log: {problem}", file=sys.stderr)
        return 1
    print("audit log: chain intact", file=sys.stderr)
    return 0
