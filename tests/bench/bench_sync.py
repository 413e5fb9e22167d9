"""sync-relay benchmark: fan-out latency and durable updates/s, beside its peers and a floor.

    .venv/bin/python tests/bench/bench_sync.py [--quick] [--fanout-only]

In one run:

  fan-out N    one small Yjs update sent by one client until every one of N readers has it
               (p50/p99 over the rounds), N = 1, 10, 100, on a real kiki-sync-relay process;
               the servers' rounds interleaved, so the machine's load falls on all alike
  durable/s    updates a writer sends back to back, each relayed (so durable) to one reader,
               per second, for one session and for 4 sessions at once
  memory       the relay's RSS growth per live session (one client joined), and per hibernated
               session (the clients gone, idle_timeout passed)

beside pycrdt-websocket's ``WebsocketServer`` (in memory, its default: nothing durable), in a
process of its own as the relay is; Hocuspocus (npm ``@hocuspocus/server``, its defaults: in
memory) under Node from tests/kikitest/node (scripts/install-node-deps), whose clients here
send the same y-websocket messages in its framing (the document's name first, an auth message
before them); and the floor: a plain ``websockets`` server relaying the same bytes to every
other client (no CRDT, no disk), in the benchmark's own process, sharing its core with the
clients. For the fan-out also the floor with durability: each update committed first to a
SQLite log on the same disk as the relay's, as the relay's store commits it (WAL,
``synchronous=FULL``), then relayed by the floor: what no durable relay can beat here. None of
them compresses (the relay does not: Yjs updates are small and already
compact). Every writer is one client (one document, one client id) sending small updates, each
a new map key; a reader is done when its document holds them (servers merge what they relay).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycrdt import Doc, Map, create_update_message, read_message, write_var_uint
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kikitest.sync_fixtures import NODE_DIR, DeviceRelay


def updates(count: int) -> list[bytes]:
    """``count`` small updates of one client (one document, one client id), each a new key."""
    doc: Doc[Any] = Doc()
    root = doc.get("map", type=Map)
    out = []
    for i in range(count):
        before = doc.get_state()
        root[f"k{i}"] = i
        out.append(create_update_message(doc.get_update(before)))
    return out


@dataclass(frozen=True)
class Target:
    """Where a client connects, and how the server frames the y-websocket messages: Hocuspocus
    puts the document's name before each one and wants an auth message first."""

    url: str
    prefix: bytes = b""
    hello: tuple[bytes, ...] = ()
    # Run before each update is sent, inside its timed round (the durability floor's commit).
    first: Callable[[bytes], None] | None = None

    async def connect(self) -> ClientConnection:
        # No keepalive: a ping unanswered while a loaded machine stalls a server would end
        # the run; the rounds time everything.
        ws = await connect(self.url, max_size=None, compression=None, ping_interval=None)
        for message in self.hello:
            await ws.send(message)
        return ws


def var_string(text: str) -> bytes:
    data = text.encode()
    return write_var_uint(len(data)) + data


def hocuspocus(port: int, document: str) -> Target:
    prefix = var_string(document)
    auth = prefix + write_var_uint(2) + write_var_uint(0) + var_string("")  # Auth, Token, ""
    return Target(f"ws://127.0.0.1:{port}/{document}", prefix, (auth,))


class Reader:
    """A reading client's document: done when it holds a number of the writer's keys (a server
    may merge or re-encode what it relays, so what arrived is applied, not counted)."""

    def __init__(self, ws: ClientConnection, prefix: bytes) -> None:
        self.ws = ws
        self.head = prefix + b"\x00"  # a sync message, in the server's framing
        self.doc: Doc[Any] = Doc()
        self.map = self.doc.get("map", type=Map)

    async def until(self, keys: int) -> None:
        at = len(self.head)
        while len(self.map) < keys:
            message = await self.ws.recv()
            if (
                isinstance(message, bytes)
                and message.startswith(self.head)
                and message[at] in (1, 2)
            ):
                self.doc.apply_update(read_message(message[at + 1 :]))


async def fanout(targets: list[Target], readers: int, rounds: int) -> list[tuple[float, float]]:
    """p50/p99 ms of one update from a sender until each of ``readers`` has it, per target.
    The targets' rounds are interleaved (round i of each in turn, the order rotating), so a
    change in the machine's load falls on every target alike."""
    groups = []
    for target in targets:
        sender, *sockets = [await target.connect() for _ in range(readers + 1)]
        groups.append((sender, [Reader(ws, target.prefix) for ws in sockets], target.prefix))
    await asyncio.sleep(0.3)
    times: list[list[float]] = [[] for _ in targets]
    for i, message in enumerate(updates(rounds)):
        for k in range(len(targets)):
            j = (i + k) % len(targets)
            sender, group, prefix = groups[j]
            start = time.perf_counter()
            if (first := targets[j].first) is not None:
                first(message)
            await sender.send(prefix + message)
            await asyncio.gather(*(r.until(i + 1) for r in group))
            times[j].append(time.perf_counter() - start)
    await asyncio.gather(*(ws.close() for s, g, _ in groups for ws in (s, *(r.ws for r in g))))
    found = []
    for series in times:
        series.sort()
        found.append(
            (statistics.median(series) * 1e3, series[max(0, int(len(series) * 0.99) - 1)] * 1e3)
        )
    return found


async def throughput(targets: list[tuple[Target, Target]], count: int) -> float:
    pairs = [(await w.connect(), Reader(await r.connect(), r.prefix), w.prefix) for w, r in targets]
    await asyncio.sleep(0.3)

    async def one(writer: ClientConnection, reader: Reader, prefix: bytes) -> None:
        messages = [prefix + m for m in updates(count)]
        reading = asyncio.ensure_future(reader.until(count))
        for m in messages:
            await writer.send(m)
        await reading

    start = time.perf_counter()
    await asyncio.gather(*(one(*pair) for pair in pairs))
    elapsed = time.perf_counter() - start
    for w, r, _ in pairs:
        await w.close()
        await r.ws.close()
    return count * len(targets) / elapsed


async def floor_server() -> tuple[Any, int]:
    rooms: dict[str, set[ServerConnection]] = {}

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        peers = rooms.setdefault(ws.request.path, set())
        peers.add(ws)
        try:
            async for message in ws:
                broadcast([p for p in peers if p is not ws], message)
        finally:
            peers.discard(ws)

    server = await serve(handler, "127.0.0.1", 0, max_size=None, compression=None)
    port = server.sockets[0].getsockname()[1]
    return server, port


def wal_commit(path: Path) -> Callable[[bytes], None]:
    """A commit of one update to a SQLite log as the relay's store makes it (WAL,
    ``synchronous=FULL``: the WAL is synced at each commit), on the same disk as its state."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE updates (seq INTEGER PRIMARY KEY, session TEXT, data BLOB)")

    def commit(update: bytes) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO updates (session, data) VALUES (?, ?)", ("floor", update))
        conn.execute("COMMIT")

    return commit


class _Channel:
    """pycrdt's ``Channel`` over a websockets connection: what pycrdt-websocket serves."""

    def __init__(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self._ws = ws
        self._path = ws.request.path

    @property
    def path(self) -> str:
        return self._path

    def __aiter__(self) -> _Channel:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except ConnectionClosed:
            raise StopAsyncIteration from None

    async def send(self, message: bytes) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._ws.send(message)

    async def recv(self) -> bytes:
        message = await self._ws.recv()
        return message if isinstance(message, bytes) else message.encode()


async def serve_pycrdt_websocket() -> None:
    """pycrdt-websocket's ``WebsocketServer`` (in memory: its default) on a free port, which
    is printed; run in a process of its own, as the relay is."""
    from pycrdt.websocket import WebsocketServer

    async with WebsocketServer() as rooms:

        async def handler(ws: ServerConnection) -> None:
            await rooms.serve(_Channel(ws))

        async with serve(handler, "127.0.0.1", 0, max_size=None, compression=None) as server:
            print(server.sockets[0].getsockname()[1], flush=True)
            await asyncio.Future()


@contextlib.contextmanager
def server_process(*argv: str, cwd: Path | None = None) -> Iterator[int]:
    """A server in a process of its own that prints its port first."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=cwd)
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline())
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


PEERS = ("kiki relay", "pycrdt-websocket", "Hocuspocus", "floor")
DURABLE_FLOOR = "floor + WAL commit"


async def main(quick: bool, fanout_only: bool) -> None:
    rounds = 30 if quick else 200
    count = 500 if quick else 5000
    with (
        tempfile.TemporaryDirectory() as tmp,
        server_process(sys.executable, __file__, "--serve-pycrdt-websocket") as pw_port,
        server_process("node", "hocuspocus.mjs", cwd=NODE_DIR) as hp_port,
    ):
        relay = DeviceRelay(Path(tmp), idle_timeout="1", rate="100000", burst="100000")
        relay.start()
        server, port = await floor_server()

        def targets(session: str, role: str = "controller") -> list[Target]:
            return [
                Target(relay.url(session, relay.token(session, role))),
                Target(f"ws://127.0.0.1:{pw_port}/{session}"),
                hocuspocus(hp_port, session),
                Target(f"ws://127.0.0.1:{port}/{session}"),
            ]

        try:
            print("p50/p99 ms; updates/s; each ratio is the kiki relay's to that peer's")
            print(f"{'':22}" + "".join(f"{name:>20}" for name in (*PEERS, DURABLE_FLOOR)))
            commit = wal_commit(Path(tmp) / "floor.sqlite3")
            for n in (100,) if fanout_only else (1, 10, 100):
                s = f"fan{n}"
                durable_floor = Target(f"ws://127.0.0.1:{port}/{s}-durable", first=commit)
                found = await fanout([*targets(s), durable_floor], n, rounds)
                cells = "".join(f"{p50:9.2f} {p99:9.2f}" + " " for p50, p99 in found)
                ratios = ", ".join(f"{found[0][0] / p50:.2f}x" for p50, _ in found[1:])
                print(f"fan-out to {n:>3} p50/p99 {cells}  p50 ratios {ratios}")
            if fanout_only:
                return
            for sessions in (1, 4):
                names = [f"tp{sessions}-{i}" for i in range(sessions)]
                writers = [targets(s) for s in names]
                readers = [targets(s, "observer") for s in names]
                rates = [
                    await throughput(
                        [(w[i], r[i]) for w, r in zip(writers, readers, strict=True)], count
                    )
                    for i in range(len(PEERS))
                ]
                cells = "".join(f"{rate:20.0f}" for rate in rates)
                ratios = ", ".join(f"{rates[0] / rate:.2f}" for rate in rates[1:])
                print(f"updates/s, {sessions} session(s){cells}  ratios {ratios}")
            print(
                "(the relay's updates are durable before relayed; pycrdt-websocket and Hocuspocus"
                " keep theirs in memory; the floor relays bytes; the floor + WAL commit commits"
                " each update to SQLite as the relay does, on the same disk, then relays it:"
                " the least a durable relay can take)"
            )
            assert relay.proc is not None
            pid = relay.proc.pid
            n = 20 if quick else 200
            before = rss_kib(pid)
            clients = []
            for i, message in enumerate(updates(n)):
                s = f"mem{i}"
                ws = await connect(relay.url(s, relay.token(s, "controller")))
                await ws.send(message)
                clients.append(ws)
            await asyncio.sleep(0.5)
            live = rss_kib(pid)
            for ws in clients:
                await ws.close()
            await asyncio.sleep(2.5)  # idle_timeout 1 s: every session hibernates
            hibernated = rss_kib(pid)
            print(
                f"memory per live session {(live - before) / n:8.1f} KiB; "
                f"per hibernated session {max(0, hibernated - before) / n:8.1f} KiB (RSS growth)"
            )
        finally:
            server.close()
            relay.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument(
        "--fanout-only", action="store_true", help="only the fan-out to 100 clients"
    )
    parser.add_argument("--serve-pycrdt-websocket", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_pycrdt_websocket:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_pycrdt_websocket())
    else:
        asyncio.run(main(args.quick, args.fanout_only))
