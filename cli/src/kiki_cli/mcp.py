"""``kiki mcp``: the broker as an MCP server on stdio, for hosts that launch servers.

MCP's stdio transport is newline-delimited JSON-RPC, exactly what the broker speaks on its
socket, so the bridge moves the bytes unchanged both ways: the broker sees the bridge's own
credentials (the host's user), and every check happens in the broker.

The bridge reads the messages as they pass for one thing only: the ids of the requests the host
sent, so that it knows which are still unanswered. When the host closes stdin (a script that
writes its requests and then waits for the output, say), the bridge stops reading stdin but keeps
the socket open until every forwarded request is answered or ``--drain-timeout`` seconds pass,
then closes it. It never half-closes the socket: the broker takes end of input for the caller
leaving and cancels its calls.

stdin and stdout may be any file, not only the pipes a host gives: a regular file, /dev/null, a
terminal, a socket (``kiki mcp < requests.jsonl > answers.jsonl``). Those the event loop can wait
on are served by its pipe transports; the others, which never make anyone wait, by blocking
reads and writes in a thread.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import stat
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from libkiki.framing import DEFAULT_MAX_LINE, LineDecoder
from libkiki.paths import TOOLS_SOCKET, socket_path
from libkiki.rpc.messages import CANCELLED, valid_id

CHUNK = 1 << 16
# A little over the broker's default call timeout (30 s), so that a call that times out there
# still gets its error back to the host.
DRAIN_TIMEOUT = 35.0
# Lines the bridge looks into. From the host: the broker's own limit (it refuses longer lines,
# answering with a null id). From the broker: room for an answer that wraps a provider's 1 MiB
# result twice (structuredContent and its text copy). Longer lines still pass, unread.
HOST_LINE = DEFAULT_MAX_LINE
BROKER_LINE = 16 << 20
# Requests the broker answers only when the connection closes: never waited for.
LISTEN = "subscriptions/listen"

# The host's side of the bridge: a chunk of stdin (b"" at its end), and a write to stdout that
# returns once every byte is out of the bridge.
Read = Callable[[], Awaitable[bytes]]
Write = Callable[[bytes], Awaitable[None]]


def _drain_timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError("must be 0 or more seconds")
    return value


def register(sub: Any) -> None:
    p = sub.add_parser(
        "mcp",
        help="serve the device's tools over MCP on stdin/stdout",
        description="Bridge an MCP host (which launches servers as subprocesses and speaks "
        "JSON-RPC on their stdin/stdout) to the tool broker's socket. When stdin closes, the "
        "answers still owed to the host are written before the bridge exits.",
    )
    p.add_argument(
        "--socket",
        type=Path,
        help="the broker's socket (default: tools.sock in the runtime directory)",
    )
    p.add_argument(
        "--drain-timeout",
        type=_drain_timeout,
        default=DRAIN_TIMEOUT,
        metavar="SECONDS",
        help="after stdin closes, how long to wait for answers to the requests already "
        f"forwarded before exiting (default {DRAIN_TIMEOUT:g}; 0 exits at once)",
    )
    p.set_defaults(func=run)


def _entries(line: bytes) -> list[Any]:
    """The messages of one line: its object, the entries of a batch, or none (not JSON)."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return []
    return value if isinstance(value, list) else [value]


def _key(rid: Any) -> bytes:
    # 1 and 1.0 are the same id to the broker (a cancellation of either reaches the request).
    if isinstance(rid, float) and rid.is_integer():
        rid = int(rid)
    return orjson.dumps(rid)


class Outstanding:
    """The requests forwarded from the host that the broker has not answered yet, by id.

    It mirrors what the broker answers: every message with a ``method`` and an ``id`` (an
    invalid one too, when its id is valid: the error echoes it), except a listen stream, which
    is answered only at close, and a request the host cancelled, which is never answered.
    """

    def __init__(self) -> None:
        self._ids: Counter[bytes] = Counter()  # a multiset: a reused id is answered twice
        self.idle = asyncio.Event()
        self.idle.set()

    def __len__(self) -> int:
        return self._ids.total()

    def sent(self, line: bytes) -> None:
        for msg in _entries(line):
            if not isinstance(msg, dict) or "method" not in msg:
                continue
            if "id" in msg:
                if valid_id(msg["id"]) and msg["method"] != LISTEN:
                    self._ids[_key(msg["id"])] += 1
                    self.idle.clear()
            elif msg["method"] == CANCELLED:
                params = msg.get("params")
                if isinstance(params, dict) and valid_id(params.get("requestId")):
                    self._drop(_key(params["requestId"]))

    def answered(self, line: bytes) -> None:
        for msg in _entries(line):
            if isinstance(msg, dict) and "method" not in msg and "id" in msg:
                with contextlib.suppress(TypeError):  # an id orjson cannot write back
                    self._drop(_key(msg["id"]))

    def _drop(self, key: bytes) -> None:
        count = self._ids.pop(key, 0)
        if count > 1:
            self._ids[key] = count - 1
        if not self._ids:
            self.idle.set()


def _pollable(loop: asyncio.AbstractEventLoop, fd: int) -> bool:
    """Whether the loop can wait for ``fd``, so that a pipe transport may serve it.

    The transports take pipes, sockets and character devices only, and the loop's selector may
    still refuse one of those: epoll refuses a file that is always ready (/dev/null, say). The
    read transport would only log that refusal and never read, so it is asked here first.
    """
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
        return False  # a regular file (or a directory): always ready, refused by epoll too
    try:
        loop.add_reader(fd, lambda: None)
    except OSError:
        return False
    loop.remove_reader(fd)
    return True


async def _stdin(loop: asyncio.AbstractEventLoop, fd: int) -> Read:
    """What reads stdin, a chunk of at most CHUNK bytes a call, b"" at its end.

    A file the loop can wait on gets a pipe transport. Any other is read in a thread, one chunk
    a call, so that it is read only as fast as the broker takes it, as a pipe is. The loop
    cannot wait on such a file because it never makes a reader wait (a regular file, /dev/null:
    always ready), so a read still in flight when the bridge stops ends at once and does not
    hold up its exit.
    """
    if _pollable(loop, fd):
        stdin = asyncio.StreamReader(limit=CHUNK)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stdin), os.fdopen(fd, "rb", closefd=False)
        )

        async def read_pipe() -> bytes:
            return await stdin.read(CHUNK)

        return read_pipe

    async def read_file() -> bytes:
        return await asyncio.to_thread(os.read, fd, CHUNK)

    return read_file


async def _stdout(loop: asyncio.AbstractEventLoop, fd: int) -> tuple[Write, Callable[[], None]]:
    """What writes to stdout, returning once the host's side has every byte, and what closes it.

    The next answer is read from the broker only once the last is written, so the host's pace
    bounds what the bridge holds, and nothing is left in a buffer when it exits. A socket is
    written with the loop's socket calls, a pipe or terminal through a pipe transport, and a
    file the loop cannot wait on in a thread, as :func:`_stdin` reads one.
    """
    if stat.S_ISSOCK(os.fstat(fd).st_mode):
        # A socket (socat, systemd's Accept=yes) is often stdin too: the write pipe transport
        # watches its fd for reading, to learn of a closed reader, and takes the host's next
        # request for that, dropping the answers. The loop's socket calls watch only writes.
        sock = socket.socket(fileno=os.dup(fd))
        sock.setblocking(False)

        async def write_socket(data: bytes) -> None:
            await loop.sock_sendall(sock, data)

        return write_socket, sock.close
    if _pollable(loop, fd):
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(os.dup(fd), "wb")
        )
        transport.set_write_buffer_limits(high=0)  # drain() waits until the host has it all
        stdout = asyncio.StreamWriter(transport, protocol, None, loop)

        async def write_pipe(data: bytes) -> None:
            stdout.write(data)
            await stdout.drain()

        return write_pipe, stdout.close

    async def write_file(data: bytes) -> None:
        await asyncio.to_thread(_write_all, fd, data)

    return write_file, lambda: None


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data``: a write may take only part of it (a signal, a disk filling up)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def bridge(path: Path, drain_timeout: float = DRAIN_TIMEOUT) -> int:
    loop = asyncio.get_running_loop()
    try:
        sock_reader, sock_writer = await asyncio.open_unix_connection(str(path))
    except OSError as exc:
        print(
            f"kiki mcp: cannot reach the tool broker at {path}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    read_host = await _stdin(loop, sys.stdin.fileno())
    write_host, close_host = await _stdout(loop, sys.stdout.fileno())
    outstanding = Outstanding()
    failed: list[str] = []  # why the host's side broke (said once the bridge is down)

    async def to_broker() -> None:
        lines = LineDecoder(HOST_LINE)
        while chunk := await read_host():
            for line in lines.feed(chunk):
                if isinstance(line, bytes):
                    outstanding.sent(line)
            sock_writer.write(chunk)
            await sock_writer.drain()
        if lines.pending:
            # The host's last message had no newline: end it, or the broker never reads it.
            for line in lines.feed(b"\n"):
                if isinstance(line, bytes):
                    outstanding.sent(line)
            sock_writer.write(b"\n")
            await sock_writer.drain()

    async def to_host() -> None:
        lines = LineDecoder(BROKER_LINE)
        while chunk := await sock_reader.read(CHUNK):
            try:
                await write_host(chunk)
            except ConnectionError:
                return  # the host closed its end: there is nobody left to tell
            except OSError as exc:  # a full disk, say: answers would be lost without a word
                failed.append(f"cannot write to stdout: {exc.strerror or exc}")
                return
            # Only once the host has it does an answer count as delivered.
            for line in lines.feed(chunk):
                if isinstance(line, bytes):
                    outstanding.answered(line)

    host = asyncio.ensure_future(to_broker())
    broker = asyncio.ensure_future(to_host())
    tasks: list[asyncio.Future[Any]] = [host, broker]
    try:
        await asyncio.wait({host, broker}, return_when=asyncio.FIRST_COMPLETED)
        if host.done() and not broker.done():
            # The host closed stdin: deliver what is owed, within the grace time. No write_eof:
            # the broker would take it for the host leaving and cancel the calls.
            # Waited for from now: the event may have been set and cleared many times before.
            idle = asyncio.ensure_future(outstanding.idle.wait())
            tasks.append(idle)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_timeout):
                    await asyncio.wait({broker, idle}, return_when=asyncio.FIRST_COMPLETED)
            if len(outstanding) and not broker.done():
                print(
                    f"kiki mcp: stdin closed; {len(outstanding)} request(s) still unanswered "
                    f"after {drain_timeout:g} s, giving up",
                    file=sys.stderr,
                )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        sock_writer.close()
        close_host()
    if failed:
        print(f"kiki mcp: {failed[0]}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    path = args.socket or socket_path(TOOLS_SOCKET)
    try:
        return asyncio.run(bridge(path, args.drain_timeout))
    except KeyboardInterrupt:
        return 0
