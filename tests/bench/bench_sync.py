"""sync-relay benchmark: fan-out latency and durable updates/s, beside a plain broadcast floor.

    .venv/bin/python tests/bench/bench_sync.py [--quick]

In one run:

  fan-out N    one small Yjs update sent by one client until every one of N readers has it
               (p50/p99 over the rounds), N = 1, 10, 100, on a real kiki-sync-relay process
  durable/s    updates a writer sends back to back, each relayed (so durable) to one reader,
               per second, for one session and for 4 sessions at once
  memory       the relay's RSS growth per live session (one client joined), and per hibernated
               session (the clients gone, idle_timeout passed)

beside pycrdt-websocket's ``WebsocketServer`` (in memory, its default: nothing durable), in a
process of its own as the relay is, and the floor: a plain ``websockets`` server relaying the
same bytes to every other client (no CRDT, no disk), in the benchmark's own process, sharing
its core with the clients. None of the three compresses (the relay does not: Yjs updates are
small and already compact). Every writer is one client (one document, one client id) sending
small updates, each a new map key. Hocuspocus is not measured here yet.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pycrdt import Doc, Map, create_update_message
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kikitest.sync_fixtures import DeviceRelay


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


def is_update(message: str | bytes) -> bool:
    return isinstance(message, bytes) and message[:2] == b"\x00\x02"


async def receive_updates(ws: ClientConnection, count: int) -> None:
    """Until ``count`` sync updates came (a server may re-encode what it relays: counted, not
    compared)."""
    while count:
        if is_update(await ws.recv()):
            count -= 1


async def fanout(urls: list[str], rounds: int) -> tuple[float, float]:
    sender, *readers = [await connect(u, max_size=None) for u in urls]
    await asyncio.sleep(0.3)
    times = []
    for message in updates(rounds):
        start = time.perf_counter()
        await sender.send(message)
        await asyncio.gather(*(receive_updates(r, 1) for r in readers))
        times.append(time.perf_counter() - start)
    for ws in (sender, *readers):
        await ws.close()
    times.sort()
    return statistics.median(times) * 1e3, times[int(len(times) * 0.99) - 1] * 1e3


async def throughput(urls: list[tuple[str, str]], count: int) -> float:
    pairs = [(await connect(w, max_size=None), await connect(r, max_size=None)) for w, r in urls]
    await asyncio.sleep(0.3)

    async def one(writer: ClientConnection, reader: ClientConnection) -> None:
        messages = updates(count)
        start_reading = asyncio.ensure_future(receive_updates(reader, count))
        for m in messages:
            await writer.send(m)
        await start_reading

    start = time.perf_counter()
    await asyncio.gather(*(one(w, r) for w, r in pairs))
    elapsed = time.perf_counter() - start
    for w, r in pairs:
        await w.close()
        await r.close()
    return count * len(urls) / elapsed


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
def pycrdt_websocket_process() -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-pycrdt-websocket"], stdout=subprocess.PIPE, text=True
    )
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


async def main(quick: bool) -> None:
    rounds = 30 if quick else 200
    count = 500 if quick else 5000
    with tempfile.TemporaryDirectory() as tmp, pycrdt_websocket_process() as pw_port:
        relay = DeviceRelay(Path(tmp), idle_timeout="1", rate="100000", burst="100000")
        relay.start()
        server, port = await floor_server()
        try:
            print(f"{'':26}{'kiki relay':>18}{'pycrdt-websocket':>20}{'floor (broadcast)':>20}")
            for n in (1, 10, 100):
                s = f"fan{n}"
                r50, r99 = await fanout(
                    [relay.url(s, relay.token(s, "controller"))] * (n + 1), rounds
                )
                p50, p99 = await fanout([f"ws://127.0.0.1:{pw_port}/{s}"] * (n + 1), rounds)
                f50, f99 = await fanout([f"ws://127.0.0.1:{port}/{s}"] * (n + 1), rounds)
                print(
                    f"fan-out to {n:>3} p50/p99 ms {r50:8.2f} {r99:8.2f}  {p50:8.2f} {p99:8.2f}"
                    f"  {f50:8.2f} {f99:8.2f}   p50 vs pycrdt-websocket {r50 / p50:5.2f}x,"
                    f" vs floor {r50 / f50:5.1f}x"
                )
            for sessions in (1, 4):
                names = [f"tp{sessions}-{i}" for i in range(sessions)]
                pairs = [
                    (
                        relay.url(s, relay.token(s, "controller")),
                        relay.url(s, relay.token(s, "observer")),
                    )
                    for s in names
                ]
                rate = await throughput(pairs, count)
                peer = await throughput(
                    [(f"ws://127.0.0.1:{pw_port}/{s}",) * 2 for s in names], count
                )
                floor = await throughput(
                    [(f"ws://127.0.0.1:{port}/{s}",) * 2 for s in names], count
                )
                print(
                    f"updates/s, {sessions} session(s) {rate:9.0f} durable {peer:9.0f} in memory"
                    f" {floor:9.0f} relayed   ratio {rate / peer:5.2f} to pycrdt-websocket,"
                    f" {rate / floor:5.2f} to the floor"
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
    parser.add_argument("--serve-pycrdt-websocket", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_pycrdt_websocket:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_pycrdt_websocket())
    else:
        asyncio.run(main(args.quick))
