"""Programs the admission tests run as separate processes (the attacker as a second user).

    python admission_peers.py serve-rpc PATH MAX_CONNECTIONS PER_USER
    python admission_peers.py hold KIND PATH N      connect N times, then classify each; hold
    python admission_peers.py flood KIND PATH N     connect, read the answer, close; N times
    python admission_peers.py partial PATH N SIZE   N connections each send all but the last
                                                    byte of a SIZE-byte frame, then close
    python admission_peers.py fill PATH N SIZE      the same, but keep them open: classify
    python admission_peers.py bigframe PATH SIZE    send a SIZE-byte frame, then a request

KIND is ``rpc`` (a JSON-RPC line socket) or ``a11y`` (a11y.sock frames). Each attack prints one
JSON line of counts on stdout; ``hold`` and ``fill`` then keep their connections until stdin
closes. A connection is ``admitted`` when it answered a request, ``refused`` when it read the
documented refusal (-32005), ``dropped`` when it was closed or reset without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import socket
import struct
import sys
from collections import Counter
from typing import Any

import orjson

from libkiki.a11y import wire
from libkiki.framing import FrameDecoder, encode_frame

TIMEOUT = 20.0
REFUSED = -32005


def request(kind: str) -> bytes:
    if kind == "rpc":
        return b'{"jsonrpc":"2.0","id":1,"method":"dev.kiki.service.getInfo"}\n'
    return encode_frame(wire.encode(wire.GetInfo(1)))


def first_answer(kind: str, sock: socket.socket) -> str:
    """What the server said first on ``sock``: admitted, refused or dropped."""
    got = b""
    decoder = FrameDecoder(1 << 20)
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return "dropped"
        if not data:
            return "dropped"
        if kind == "rpc":
            got += data
            if b"\n" not in got:
                continue
            reply: dict[str, Any] = orjson.loads(got.split(b"\n", 1)[0])
            if "result" in reply:
                return "admitted"
            return "refused" if reply["error"]["code"] == REFUSED else "other"
        for frame in decoder.feed(data):
            assert isinstance(frame, bytes)
            message = wire.decode(frame)
            if isinstance(message, wire.Info):
                return "admitted"
            if isinstance(message, wire.Error):
                return "refused" if message.code == REFUSED else "other"


def ask(kind: str, sock: socket.socket) -> str:
    with contextlib.suppress(OSError):  # closed after its refusal: the refusal is still there
        sock.sendall(request(kind))
    return first_answer(kind, sock)


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Blocking: with a timeout, connect() to a full backlog fails (EAGAIN) instead of waiting.
    sock.connect(path)
    sock.settimeout(TIMEOUT)
    return sock


def report(counts: Counter[str]) -> None:
    print(json.dumps(dict(counts)), flush=True)


def hold(kind: str, path: str, n: int) -> None:
    socks = [connect(path) for _ in range(n)]  # as fast as it can, answers read later
    report(Counter(ask(kind, sock) for sock in socks))
    sys.stdin.read()


def flood(kind: str, path: str, n: int) -> None:
    counts: Counter[str] = Counter()
    for _ in range(n):
        with connect(path) as sock:
            counts[ask(kind, sock)] += 1
    report(counts)


def send_partial(path: str, n: int, size: int) -> list[socket.socket]:
    socks = [connect(path) for _ in range(n)]
    body = b"\0" * (size - 1)
    for sock in socks:
        with contextlib.suppress(OSError):  # refused on the way: read below
            sock.sendall(struct.pack("<I", size) + body)
    return socks


def partial(path: str, n: int, size: int) -> None:
    for sock in send_partial(path, n, size):
        sock.close()
    report(Counter(sent=n))


def fill(path: str, n: int, size: int) -> None:
    counts: Counter[str] = Counter()
    for sock in send_partial(path, n, size):
        sock.settimeout(0.5)  # a connection still held has nothing to say: it times out
        try:
            data = sock.recv(65536)
        except TimeoutError:
            counts["held"] += 1
            continue
        except ConnectionResetError:
            counts["dropped"] += 1
            continue
        frames = [f for f in FrameDecoder(1 << 20).feed(data) if isinstance(f, bytes)]
        message = wire.decode(frames[0]) if frames else None
        if isinstance(message, wire.Error) and message.code == REFUSED:
            counts["refused"] += 1
        else:
            counts["dropped"] += 1
    report(counts)
    sys.stdin.read()


def bigframe(path: str, size: int) -> None:
    """One frame of ``size`` bytes (not a valid message: the server must buffer it whole to
    say so), then a request: what the server answers to each."""
    with connect(path) as sock:
        with contextlib.suppress(OSError):  # refused on the way: read below
            sock.sendall(struct.pack("<I", size) + bytes(size) + request("a11y"))
        answers: Counter[str] = Counter()
        decoder = FrameDecoder(1 << 20)
        while sum(answers.values()) < 2:
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                data = b""
            if not data:
                answers["dropped"] += 1
                break
            for frame in decoder.feed(data):
                assert isinstance(frame, bytes)
                message = wire.decode(frame)
                name = type(message).__name__
                answers[f"{name}{message.code}" if isinstance(message, wire.Error) else name] += 1
    report(answers)


async def serve_rpc(path: str, max_connections: int, per_user: int) -> None:
    from pathlib import Path

    from libkiki.rpc import Methods, RequestContext, serve_unix
    from libkiki.sockets import bind_unix

    methods = Methods()

    @methods.method("dev.kiki.service.getInfo")  # what every Kiki JSON-RPC service answers
    async def get_info(ctx: RequestContext) -> dict[str, int]:
        return dict(server.counters)

    listener = bind_unix(Path(path), mode=0o666)
    server = serve_unix(
        listener, methods, max_connections=max_connections, max_connections_per_user=per_user
    )
    async with server:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


def warm_up() -> None:
    """Import now what the attack imports lazily: run as the second user, it cannot read the
    interpreter's own library under /root."""
    for message in (wire.GetInfo(1), wire.Error(1, REFUSED, "x")):
        wire.decode(wire.encode(message))
    json.dumps({})
    orjson.loads(b"{}")


def main(argv: list[str]) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    what, *args = argv
    if what == "serve-rpc":
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        asyncio.run(serve_rpc(args[0], int(args[1]), int(args[2])))
    elif what == "hold":
        hold(args[0], args[1], int(args[2]))
    elif what == "flood":
        flood(args[0], args[1], int(args[2]))
    elif what == "partial":
        partial(args[0], int(args[1]), int(args[2]))
    elif what == "fill":
        fill(args[0], int(args[1]), int(args[2]))
    elif what == "bigframe":
        bigframe(args[0], int(args[1]))
    else:
        raise SystemExit(f"unknown command {what}")


if __name__ == "__main__":
    main(sys.argv[1:])
