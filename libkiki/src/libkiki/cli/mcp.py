"""``kiki mcp``: the broker as an MCP server on stdio, for hosts that launch servers.

MCP's stdio transport is newline-delimited JSON-RPC, exactly what the broker speaks on its
socket, so the bridge moves bytes and never parses them: the broker sees the bridge's own
credentials (the host's user), and every check happens in the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from libkiki.paths import TOOLS_SOCKET, socket_path

CHUNK = 1 << 16


def register(sub: Any) -> None:
    p = sub.add_parser(
        "mcp",
        help="serve the device's tools over MCP on stdin/stdout",
        description="Bridge an MCP host (which launches servers as subprocesses and speaks "
        "JSON-RPC on their stdin/stdout) to the tool broker's socket.",
    )
    p.add_argument(
        "--socket",
        type=Path,
        help="the broker's socket (default: tools.sock in the runtime directory)",
    )
    p.set_defaults(func=run)


async def _pump(reader: asyncio.StreamReader, write: Any, drain: Any) -> None:
    while chunk := await reader.read(CHUNK):
        write(chunk)
        await drain()


async def bridge(path: Path) -> int:
    loop = asyncio.get_running_loop()
    try:
        sock_reader, sock_writer = await asyncio.open_unix_connection(str(path))
    except OSError as exc:
        print(
            f"kiki mcp: cannot reach the tool broker at {path}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    stdin = asyncio.StreamReader(limit=CHUNK)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin.buffer)
    out_transport, out_protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    )
    stdout = asyncio.StreamWriter(out_transport, out_protocol, None, loop)

    async def to_broker() -> None:
        await _pump(stdin, sock_writer.write, sock_writer.drain)
        # The host closed our stdin: let the broker finish answering, then stop.
        if sock_writer.can_write_eof():
            sock_writer.write_eof()

    async def to_host() -> None:
        await _pump(sock_reader, stdout.write, stdout.drain)

    host = asyncio.ensure_future(to_broker())
    broker = asyncio.ensure_future(to_host())
    try:
        await asyncio.wait({host, broker}, return_when=asyncio.FIRST_COMPLETED)
        if host.done() and not broker.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await asyncio.shield(broker)
    finally:
        for task in (host, broker):
            task.cancel()
        await asyncio.gather(host, broker, return_exceptions=True)
        sock_writer.close()
        stdout.close()
    return 0


def run(args: argparse.Namespace) -> int:
    path = args.socket or socket_path(TOOLS_SOCKET)
    try:
        return asyncio.run(bridge(path))
    except KeyboardInterrupt:
        return 0
