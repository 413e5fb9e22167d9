"""``kiki tools``: list, call and audit the device's tools through the broker."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from kiki_cli.common import fail, seconds, service_group
from libkiki.audit import read_entries, verify
from libkiki.errors import InvalidParams, KikiError, MethodNotFound, ToolError
from libkiki.paths import TOOLS_SOCKET
from libkiki.tools import Event, Lost, Subscription, ToolClient

AUDIT_TOOL = "dev.kiki.tools.readAuditLog"
AUDIT_STREAM = "dev.kiki.tools.subscribeAudit"
_PAGE = 1000  # entries per readAuditLog page, its most


def register(sub: Any) -> None:
    _, cmds = service_group(
        sub,
        "tools",
        help="list, call and audit tools",
        description="Talk to the tool broker on tools.sock.",
        peer="the broker",
        socket_name=TOOLS_SOCKET,
    )

    ls = cmds.add_parser(
        "list",
        help="list the tools you may call (and the event streams you may subscribe to)",
        description="List the tools registered on the broker, built-in and provided, that the "
        "broker's policy lets you (this user, this process) call; others are left out. Then "
        "the event streams served now that it lets you subscribe to, of kind 'stream' (as "
        "'kiki tools streams' lists them), each with its provider.",
    )
    ls.add_argument(
        "--json", action="store_true", help="the MCP tool descriptors as JSON (tools only)"
    )
    ls.set_defaults(func=run_list)

    streams = cmds.add_parser(
        "streams",
        help="list the event streams you may subscribe to",
        description="List the event streams (lexicon subscriptions) the broker's providers "
        "serve now that its policy lets you subscribe to, each with its provider "
        "(kiki/listStreams); watch one with 'kiki events watch NSID'.",
    )
    streams.add_argument(
        "--json", action="store_true", help="{nsid, description, provider} objects as JSON"
    )
    streams.set_defaults(func=run_streams)

    call = cmds.add_parser(
        "call",
        help="call a tool",
        description="Call a tool by NSID. Arguments come from --json, or from key=value pairs, "
        "each key at most once. A value is converted by the type the tool's input schema "
        "declares for its key: a string stays as written, an integer, number or boolean is "
        "parsed (an error when it does not parse), an object or array is read as JSON. For a "
        "key the schema does not type (or a tool the broker does not list), the value is read "
        'as JSON when it parses (3, true, [1,2], {"a":1}) and as a string otherwise. Prints '
        "the tool's output as JSON. Argument errors exit with status 2; a call that fails (a "
        "tool error, a denial, a timeout, no broker) exits with 1 and says why.",
    )
    call.add_argument("nsid")
    call.add_argument("pairs", nargs="*", metavar="key=value")
    call.add_argument(
        "--json",
        dest="json_args",
        metavar="ARGS",
        help="arguments as one JSON object ('-' reads it from stdin)",
    )
    call.add_argument("--timeout", type=seconds, default=60.0, help="seconds (default 60)")
    call.set_defaults(func=run_call)

    log = cmds.add_parser(
        "log",
        help="read the audit log of tool calls",
        description="Show the newest entries of the broker's audit log (one line per tool call: "
        "time, caller, tool, outcome, duration), oldest first. Through the broker by default "
        "(its readAuditLog tool, which the policy must let you call), or from the file with "
        "--file. Following through the broker subscribes to its subscribeAudit stream; a "
        "broker without it is polled, and every poll is a call with an audit line of its own "
        "(not shown). --file with --follow reads the file instead.",
    )
    log.add_argument(
        "--limit", type=_count, default=50, help="entries to show, 0 or more (default 50)"
    )
    log.add_argument("--follow", "-f", action="store_true", help="keep printing new entries")
    log.add_argument(
        "--verify",
        action="store_true",
        help="check the hash chain; exit 1 when it is broken (not with --follow)",
    )
    log.add_argument(
        "--file",
        type=Path,
        help="read an audit.jsonl file instead of asking the "
        "broker (with --verify, checks it offline)",
    )
    log.add_argument("--json", action="store_true", help="one JSON entry per line")
    log.set_defaults(func=run_log)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number, 0 or more: {text!r}")
    return value


def _fail(exc: KikiError) -> int:
    return fail("tools", exc)


def run_list(args: argparse.Namespace) -> int:
    async def go() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with ToolClient(args.socket) as client:
            tools = await client.list()
            return tools, [] if args.json else await client.streams()

    try:
        tools, streams = asyncio.run(go())
    except KikiError as exc:
        return _fail(exc)
    if args.json:
        print(orjson.dumps(tools, option=orjson.OPT_INDENT_2).decode())
        return 0
    # Who answers each, as the broker's kernel identified it (tools/list's _meta).
    rows = [
        (
            t["name"],
            "query" if t.get("annotations", {}).get("readOnlyHint") else "procedure",
            _who(_meta_provider(t)),
            t.get("description"),
        )
        for t in tools
    ]
    rows += [(s["nsid"], "stream", _who(s.get("provider")), s.get("description")) for s in streams]
    _table(rows)
    return 0


def run_streams(args: argparse.Namespace) -> int:
    async def go() -> list[dict[str, Any]]:
        async with ToolClient(args.socket) as client:
            return await client.streams()

    try:
        streams = asyncio.run(go())
    except KikiError as exc:
        return _fail(exc)
    if args.json:
        print(orjson.dumps(streams, option=orjson.OPT_INDENT_2).decode())
        return 0
    _table([(s["nsid"], "stream", _who(s.get("provider")), s.get("description")) for s in streams])
    return 0


def _table(rows: list[tuple[str, str, str, Any]]) -> None:
    width = max((len(r[0]) for r in rows), default=4)
    pwidth = max((len(r[2]) for r in rows), default=8)
    for name, kind, provider, description in rows:
        desc = description.splitlines()[0] if isinstance(description, str) and description else ""
        print(f"{name:<{width}}  {kind:<9}  {provider:<{pwidth}}  {desc}")


def _meta_provider(tool: dict[str, Any]) -> Any:
    meta = tool.get("_meta")
    return meta.get("dev.kiki/provider") if isinstance(meta, dict) else None


def _who(view: Any) -> str:
    if not isinstance(view, dict):
        return "?"
    return f"{view.get('identity', '?')} pid {view.get('pid', '?')}"


class ArgumentsError(KikiError):
    """The arguments given on the command line do not make a call: a usage error."""


USAGE = 2  # the exit status of a usage error, as argparse's


def parse_json_arguments(json_args: str) -> dict[str, Any]:
    text = sys.stdin.read() if json_args == "-" else json_args
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ArgumentsError(f"--json is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ArgumentsError("--json must be a JSON object")
    return value


def split_pairs(pairs: list[str]) -> dict[str, str]:
    """``key=value`` words as a mapping of the raw values; each key may be given once."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ArgumentsError(f"{pair!r} is not key=value")
        if key in out:
            raise ArgumentsError(f"argument {key!r} is given more than once")
        out[key] = raw
    return out


_NO_JSON = object()
_CHECKS: dict[str, tuple[str, Any]] = {
    "integer": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "number": ("a number", lambda v: isinstance(v, int | float) and not isinstance(v, bool)),
    "boolean": ("true or false", lambda v: isinstance(v, bool)),
    "null": ("null", lambda v: v is None),
    "object": ("a JSON object", lambda v: isinstance(v, dict)),
    "array": ("a JSON array", lambda v: isinstance(v, list)),
}


def declared_type(schema: Any) -> tuple[str | None, bool]:
    """The one JSON Schema type ``schema`` declares and whether null is allowed besides it;
    ``None`` when it declares none, or several (then the value is not converted by type)."""
    if not isinstance(schema, dict):
        return None, False
    kind = schema.get("type")
    if isinstance(kind, str):
        return kind, False
    options = schema.get("anyOf")
    if isinstance(options, list):
        # The broker's form of a nullable property: {"anyOf": [schema, {"type": "null"}]}.
        rest = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
        if len(rest) == 1 and len(rest) < len(options):
            return declared_type(rest[0])[0], True
    return None, False


def convert(key: str, raw: str, schema: Any) -> Any:
    """The value of ``key=raw`` for a property declared by ``schema`` (``None``: untyped)."""
    kind, nullable = declared_type(schema)
    if kind == "string":
        return raw
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = _NO_JSON
    if kind not in _CHECKS:
        return raw if value is _NO_JSON else value
    what, check = _CHECKS[kind]
    if check(value) or (nullable and value is None):
        return value
    raise ArgumentsError(f"argument {key!r} must be {what} (the tool's input schema), not {raw!r}")


def typed_arguments(raw: dict[str, str], tool: dict[str, Any] | None) -> dict[str, Any]:
    """``raw`` converted by the types ``tool``'s input schema declares (untyped without it)."""
    schema = tool.get("inputSchema") if tool is not None else None
    props = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(props, dict):
        props = {}
    return {key: convert(key, value, props.get(key)) for key, value in raw.items()}


def run_call(args: argparse.Namespace) -> int:
    try:
        if args.json_args is not None and args.pairs:
            raise ArgumentsError("give the arguments as --json or as key=value pairs, not both")
        given = parse_json_arguments(args.json_args) if args.json_args is not None else None
        pairs = split_pairs(args.pairs)
    except ArgumentsError as exc:
        _fail(exc)
        return USAGE

    async def go() -> Any:
        async with ToolClient(args.socket) as client:
            arguments = given
            if arguments is None:
                tool = None
                if pairs:  # typed by the tool's schema; without pairs there is nothing to type
                    tools = await client.list()
                    tool = next((t for t in tools if t.get("name") == args.nsid), None)
                arguments = typed_arguments(pairs, tool)
            return await client.call(args.nsid, arguments, timeout=args.timeout)

    try:
        result = asyncio.run(go())
    except ArgumentsError as exc:
        _fail(exc)
        return USAGE
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
    if args.follow and args.verify:
        # A check ends with a verdict; following does not end: one after the other.
        print("kiki tools: --verify cannot go with --follow", file=sys.stderr)
        return USAGE
    try:
        if args.file is not None:
            return _log_file(args)
        return asyncio.run(_log_remote(args))
    except KikiError as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        return 0


async def _log_remote(args: argparse.Namespace) -> int:
    async with ToolClient(args.socket) as client:
        # Subscribed before the log is read, so that nothing written in between is missed:
        # what the stream repeats of the pages read is skipped by its seq.
        stream = await _audit_stream(client) if args.follow else None
        # The newest `limit` entries, a page at a time backwards from the end of the log (each
        # page costs the broker the same however long the log is); shown oldest first.
        want = max(args.limit, 0)
        pages: list[list[dict[str, Any]]] = []
        got = 0
        params: dict[str, Any] = {"latest": True, "limit": min(max(want, 1), _PAGE)}
        page: dict[str, Any] = await client.call(AUDIT_TOOL, params)
        cursor = page.get("cursor", 0)  # following goes on after the newest entry
        while want:
            pages.append(page["entries"])
            got += len(page["entries"])
            if got >= want or "before" not in page:
                break
            params = {"before": page["before"], "limit": min(want - got, _PAGE)}
            page = await client.call(AUDIT_TOOL, params)
        shown = [entry for entries in reversed(pages) for entry in entries]
        newest = shown[-1].get("seq", 0) if shown else 0
        for entry in shown[-want:] if want else []:
            if not _own_subscribe(entry):
                _show(entry, args.json)
        problems: list[str] = []
        if args.verify:
            # Once: the broker reads the whole log for it (in a thread of its own).
            checked = await client.call(AUDIT_TOOL, {"latest": True, "limit": 1, "verify": True})
            problems = checked.get("problems", [])
        if stream is not None:
            await _follow_stream(stream, newest if isinstance(newest, int) else 0, args.json)
            return 0
        pause = _POLL_FIRST
        while args.follow:
            page = await client.call(AUDIT_TOOL, {"cursor": cursor, "limit": _PAGE})
            news = [e for e in page["entries"] if not _own_poll(e)]
            for entry in news:
                _show(entry, args.json)
            cursor = page.get("cursor", cursor)
            # Each poll is a call, with an audit line of its own (not shown). Caught up, a
            # person is watching: a second between polls, and while nothing but our own polls
            # comes, longer, up to _POLL_MOST, so that an idle watch adds fewer lines to the
            # log. A broker older than `more` says there is more with a full page.
            if page.get("more") or len(page["entries"]) >= _PAGE:
                continue
            pause = _POLL_FIRST if news else min(pause * 2, _POLL_MOST)
            await asyncio.sleep(pause)
    return _report(problems) if args.verify else 0


_POLL_FIRST = 1.0  # seconds between polls while entries come
_POLL_MOST = 8.0  # seconds between polls, at most, while none do


async def _audit_stream(client: ToolClient) -> Subscription[Any] | None:
    """The broker's stream of new audit entries; None from a broker that has none."""
    stream = client.subscribe(AUDIT_STREAM)
    try:
        await stream.open()
    except (MethodNotFound, InvalidParams):  # no streams at all; no such stream
        return None
    return stream


async def _follow_stream(stream: Subscription[Any], newest: int, as_json: bool) -> None:
    async for item in stream:
        if isinstance(item, Lost):
            print(
                f"kiki tools: {item.count} audit entries were not shown (this reader fell "
                "behind); kiki tools log --limit N shows them",
                file=sys.stderr,
                flush=True,
            )
            continue
        if not isinstance(item, Event) or not isinstance(item.message, dict):
            continue
        entry = item.message
        seq = entry.get("seq")
        if isinstance(seq, int) and seq <= newest:
            continue  # written before the pages were read, and shown with them
        if not (_own_poll(entry) or _own_subscribe(entry)):
            _show(entry, as_json)


def _own_subscribe(entry: dict[str, Any]) -> bool:
    """An entry for this process's own subscription to the audit stream."""
    caller = entry.get("caller")
    return (
        entry.get("tool") == AUDIT_STREAM
        and isinstance(caller, dict)
        and caller.get("pid") == os.getpid()
    )


def _own_poll(entry: dict[str, Any]) -> bool:
    """An entry for one of this process's own readAuditLog polls."""
    caller = entry.get("caller")
    return (
        entry.get("tool") == AUDIT_TOOL
        and isinstance(caller, dict)
        and caller.get("pid") == os.getpid()
    )


def _log_file(args: argparse.Namespace) -> int:
    path: Path = args.file
    try:
        _check_readable(path)
        if args.follow:
            _follow_file(path, args.limit, args.json)
        for entry in read_entries(path, last=args.limit):
            _show(entry, args.json)
        if args.verify:
            return _report([str(p) for p in verify(path, path.with_name("audit.head"))])
    except OSError as exc:
        print(f"kiki tools: {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _check_readable(path: Path) -> None:
    """An OSError saying why ``path`` is not a file to read (read_entries takes a missing file
    for an empty log, which is right for the broker's own file, not for a typo)."""
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory")
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "does not exist")
    if not path.is_file():  # /dev/zero would be read for ever, a FIFO wait for a writer
        raise OSError(errno.EINVAL, "is not a regular file")


_FOLLOW_PAUSE = 0.5  # seconds between looks at a file that has not grown
_FOLLOW_LINE = 2 << 20  # the longest line kept while waiting for its end (the log's own limit)


def _follow_file(path: Path, limit: int, as_json: bool) -> None:
    """Print the last ``limit`` entries of ``path``, then those appended to it, as they come,
    read through the same open file (none missed or shown twice in between). A file moved
    away and replaced (the README's rotation), or cut, is read again from its start."""
    f = path.open("rb")
    try:
        *lines, rest = f.read().split(b"\n")
        for line in lines[-limit:] if limit else []:
            _show_line(line, as_json)
        while True:
            chunk = f.read(1 << 20)
            if chunk:
                *lines, rest = (rest + chunk).split(b"\n")
                for line in lines:
                    _show_line(line, as_json)
                if len(rest) > _FOLLOW_LINE:
                    print(f"kiki tools: {path}: skipped a line over 2 MiB", file=sys.stderr)
                    rest = b""
                continue
            time.sleep(_FOLLOW_PAUSE)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                continue  # moved away; its successor is not there yet
            if now.st_ino != os.fstat(f.fileno()).st_ino or now.st_size < f.tell():
                *last, _ = (rest + f.read()).split(b"\n")  # what came just before the move
                for line in last:
                    _show_line(line, as_json)
                f.close()
                f = path.open("rb")
                rest = b""
    finally:
        f.close()


def _show_line(line: bytes, as_json: bool) -> None:
    with contextlib.suppress(orjson.JSONDecodeError):  # stepped over, as read_entries does
        entry = orjson.loads(line)
        if isinstance(entry, dict):
            _show(entry, as_json)


def _report(problems: list[str]) -> int:
    if problems:
        for problem in problems:
            print(f"audit log: {problem}", file=sys.stderr)
        return 1
    print("audit log: chain intact", file=sys.stderr)
    return 0
