"""``kiki a11y``: read, search, watch, capture and act on the desktop's accessibility trees."""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from kiki_cli.common import fail, seconds, seconds_or_none, service_group
from libkiki.a11y import wire
from libkiki.a11y.client import A11yClient, role_value
from libkiki.a11y.render import node_json, node_line, render_text, tree_json
from libkiki.a11y.search import DEFAULT_LIMIT
from libkiki.errors import InvalidParams, KikiError, Timeout, Unavailable
from libkiki.paths import A11Y_SOCKET


def register(sub: Any) -> None:
    p, cmds = service_group(
        sub,
        "a11y",
        help="the desktop's accessibility trees",
        description="Talk to the a11y-server on a11y.sock.",
        peer="the server",
        socket_name=A11Y_SOCKET,
    )
    p.add_argument("--timeout", type=seconds, default=10.0, help="seconds per request (default 10)")

    dump = cmds.add_parser("dump", help="print every app's tree")
    form = dump.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="JSON: apps and their nodes")
    form.add_argument("--text", action="store_true", help="the outline agents read (default)")
    dump.add_argument("--app", help="only this app id")
    dump.add_argument("--max-nodes", type=int, default=5000, help="text budget (default 5000)")
    dump.add_argument("--max-chars", type=int, default=200_000, help="text budget")
    dump.set_defaults(func=run_dump)

    find = cmds.add_parser(
        "find",
        help="find nodes",
        description="Every criterion must hold: role=button, name=Save (exact), name~=sav "
        "(substring, any case), text~=… (name, value or description), state=focused.",
    )
    find.add_argument("criteria", nargs="+", metavar="KEY=VALUE")
    find.add_argument("--app", default="", help="only this app id")
    find.add_argument(
        "--limit",
        type=_limit,
        default=DEFAULT_LIMIT,
        help=f"nodes at most (default {DEFAULT_LIMIT})",
    )
    find.add_argument("--json", action="store_true")
    find.set_defaults(func=run_find)

    act = cmds.add_parser("act", help="perform an action on a node (REF as printed: tree:node)")
    act.add_argument("ref")
    act.add_argument("action", help=", ".join(wire.ACTIONS))
    act.add_argument("value", nargs="?", default="", help="for setValue")
    act.set_defaults(func=run_act)

    watch = cmds.add_parser(
        "watch",
        help="print updates as they happen (Ctrl-C stops)",
        description="Subscribe and print every snapshot, update and removal. When the "
        "a11y-server goes away (a crash, a restart), watch says so on stderr, connects again "
        "as soon as it is back (waiting 0.1 s, then longer, at most 2 s, between tries), says "
        "so, and goes on from the new snapshot; it exits 1 when the server is not back within "
        "--reconnect seconds.",
    )
    watch.add_argument("--app", action="append", default=[], help="only this app id")
    watch.add_argument("--json", action="store_true", help="one JSON object per update")
    watch.add_argument(
        "--reconnect",
        type=seconds_or_none,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for a server that went away (default 60; 0: exit at once)",
    )
    watch.set_defaults(func=run_watch)

    cap = cmds.add_parser(
        "capture",
        help="record the raw frames received",
        description="Subscribe and append every frame received to FILE exactly as it came off "
        "the socket: a uint32 little-endian length, then the FlatBuffer (file identifier KA11). "
        "The file is a plain concatenation of size-prefixed buffers; each one decodes with "
        "`flatc --json --size-prefixed schemas/a11y.fbs -- FRAME`. Exit status 1 when the "
        "a11y-server goes away before --count frames (or, without --count, at all), or "
        "refuses the subscription (the file is then left as it was).",
    )
    cap.add_argument("file", type=Path)
    cap.add_argument("--count", type=int, default=0, help="stop after N frames (0: Ctrl-C)")
    cap.add_argument("--app", action="append", default=[], help="only this app id")
    cap.set_defaults(func=run_capture)


def _limit(text: str) -> int:
    value = int(text) if text.isdecimal() else 0
    if not 0 < value < 1 << 32:  # the wire's uint
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 4294967295: {text!r}")
    return value


def _fail(exc: KikiError) -> int:
    return fail("a11y", exc)


def _run(args: argparse.Namespace, coro: Any) -> int:
    try:
        result: int = asyncio.run(coro)
    except KikiError as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        return 0
    return result


def _client(args: argparse.Namespace) -> A11yClient:
    return A11yClient(args.socket, timeout=args.timeout, peer="kiki a11y")


def _subscribed(args: argparse.Namespace, apps: list[str]) -> A11yClient:
    """A client whose subscription goes out with its hello: one round trip to a mirror."""
    return A11yClient.subscribing(args.socket, apps=apps, timeout=args.timeout, peer="kiki a11y")


def run_dump(args: argparse.Namespace) -> int:
    async def go() -> int:
        async with _subscribed(args, [args.app] if args.app else []) as client:
            mirror = client.mirror
        if args.app and not mirror.trees:
            raise InvalidParams(f"no app {args.app!r} has published a tree")
        if args.json:
            doc = {"trees": [tree_json(t) for t in mirror]}
            print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        else:
            rendering = render_text(mirror, max_nodes=args.max_nodes, max_chars=args.max_chars)
            print(rendering.text or "(no app has published a tree)")
        return 0

    return _run(args, go())


def parse_criteria(criteria: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": None, "name": "", "exact": None, "text": "", "states": []}
    for item in criteria:
        key, op, value = item.partition("~=")
        if not op:
            key, op, value = item.partition("=")
        if not op or not key:
            raise InvalidParams(f"{item!r} is not KEY=VALUE or KEY~=VALUE")
        match key, op:
            case "role", "=":
                role_value(value)
                out["role"] = value
            case "name", "~=":
                out["name"] = value
            case "name", "=":
                out["name"] = value
                out["exact"] = value
            case "text", "~=":
                out["text"] = value
            case "state", "=":
                try:
                    wire.states_of(value)
                except ValueError:
                    raise InvalidParams(
                        f"unknown state {value!r} (one of {', '.join(wire.STATE_BITS)})"
                    ) from None
                out["states"].append(value)
            case _:
                raise InvalidParams(
                    f"unknown criterion {item!r} (role=, name=, name~=, text~=, state=)"
                )
    return out


def run_find(args: argparse.Namespace) -> int:
    async def go() -> int:
        c = parse_criteria(args.criteria)
        async with _client(args) as client:
            nodes, total = await client.query(
                role=c["role"],
                name=c["name"],
                text=c["text"],
                states=c["states"],
                app_id=args.app,
                limit=args.limit,
            )
        if c["exact"] is not None:
            nodes = [n for n in nodes if n.name == c["exact"]]
            total = len(nodes)
        if args.json:
            doc = {"nodes": [node_json(n) for n in nodes], "total": total}
            print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        else:
            for n in nodes:
                print(node_line(n))
            if total > len(nodes):
                print(f"… {total - len(nodes)} more (raise --limit)")
        return 0 if nodes else 1

    return _run(args, go())


def run_act(args: argparse.Namespace) -> int:
    async def go() -> int:
        async with _client(args) as client:
            message = await client.act(args.ref, args.action, args.value, timeout=args.timeout)
        print(message or "ok")
        return 0

    return _run(args, go())


def _describe(event: wire.Snapshot | wire.TreeUpdate | wire.TreeGone | wire.Resync) -> str:
    match event:
        case wire.Snapshot():
            count = sum(len(t.nodes) for t in event.trees)
            return f"snapshot: {len(event.trees)} trees, {count} nodes"
        case wire.TreeUpdate():
            cause = wire.CAUSE_NAMES.get(event.cause, "unknown")
            head = (
                f"tree {event.tree_id} seq {event.seq} ({cause}): "
                f"{len(event.nodes)} changed, {len(event.removed)} removed"
            )
            return "\n".join([head, *("  " + node_line(n) for n in event.nodes)])
        case wire.TreeGone():
            return f"tree {event.tree_id} gone"
    return f"resync: {event.reason}"


def _event_json(event: wire.Snapshot | wire.TreeUpdate | wire.TreeGone | wire.Resync) -> bytes:
    match event:
        case wire.Snapshot():
            doc: dict[str, Any] = {"type": "snapshot", "trees": len(event.trees)}
        case wire.TreeUpdate():
            doc = {
                "type": "update",
                "treeId": event.tree_id,
                "seq": event.seq,
                "baseSeq": event.base_seq,
                "cause": wire.CAUSE_NAMES.get(event.cause, "unknown"),
                "nodes": [node_json(n) for n in event.nodes],
                "removed": list(event.removed),
            }
        case wire.TreeGone():
            doc = {"type": "gone", "treeId": event.tree_id}
        case wire.Resync():
            doc = {"type": "resync", "reason": event.reason}
    return orjson.dumps(doc)


RETRY_FIRST, RETRY_MOST = 0.1, 2.0  # seconds between tries to reach a server that went away


def run_watch(args: argparse.Namespace) -> int:
    lost = False  # the connection ended at least once

    async def watch_once() -> None:
        """Until the connection ends: nothing is lost silently, the server's going is news."""
        async with _subscribed(args, args.app) as client:
            if lost:
                print("kiki a11y: reconnected to the a11y-server", file=sys.stderr, flush=True)
            async for event in client.events():
                if args.json:
                    sys.stdout.buffer.write(_event_json(event) + b"\n")
                    sys.stdout.flush()
                else:
                    print(_describe(event), flush=True)

    async def go() -> int:
        nonlocal lost
        await watch_once()  # the first connection's failure is the command's error
        while True:
            lost = True
            print("kiki a11y: the a11y-server went away; reconnecting", file=sys.stderr, flush=True)
            deadline = asyncio.get_running_loop().time() + args.reconnect
            pause = RETRY_FIRST
            while True:
                try:
                    await watch_once()
                    break
                except (Unavailable, Timeout) as exc:  # not back yet, or gone again at once
                    left = deadline - asyncio.get_running_loop().time()
                    if left <= 0:
                        raise Unavailable(
                            f"the a11y-server did not come back within {args.reconnect:g} s ({exc})"
                        ) from None
                    await asyncio.sleep(min(pause, left))
                    pause = min(pause * 2, RETRY_MOST)

    return _run(args, go())


def run_capture(args: argparse.Namespace) -> int:
    async def go(out: BinaryIO) -> int:
        done = asyncio.Event()
        seen = 0
        # Frames received before the subscription is known to be accepted: the Hello's answer
        # and the Subscribe's (its snapshot, or the Error refusing it, which entering the
        # client raises: nothing of a refused capture reaches the file). Held only until
        # `async with` is entered, which follows the Subscribe's answer as soon as the
        # client's reader next waits for data: at most what its stream buffer holds then.
        early: list[bytes] = []
        pending: list[bytes] | None = early

        def keep(frame: bytes) -> None:
            nonlocal seen
            if args.count and seen >= args.count:
                return
            out.write(struct.pack("<I", len(frame)) + frame)
            out.flush()
            seen += 1
            if args.count and seen >= args.count:
                done.set()

        def record(frame: bytes) -> None:
            if pending is not None:
                pending.append(frame)
            else:
                keep(frame)

        client = _subscribed(args, args.app)
        client.on_frame = record  # before entering: the snapshot comes with the Hello's answer
        async with client:
            # Accepted: the capture starts at the snapshot, after the Hello's answer.
            pending = None
            for frame in early[1:]:
                keep(frame)
            early.clear()  # the snapshot is not kept for the rest of the capture
            closed = asyncio.ensure_future(client.closed.wait())
            stop = asyncio.ensure_future(done.wait())
            try:
                await asyncio.wait({closed, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                closed.cancel()
                stop.cancel()
        if not done.is_set():  # the server went away: the capture ends short of what was asked
            print(
                f"kiki a11y capture: the a11y-server went away; captured {seen} frames to "
                f"{args.file}",
                file=sys.stderr,
            )
            return 1
        print(f"captured {seen} frames to {args.file}", file=sys.stderr)
        return 0

    try:
        with args.file.open("ab") as out:
            return _run(args, go(out))
    except OSError as exc:  # cannot open it, or a write failed (a full disk): frames lost
        print(f"kiki a11y capture: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
