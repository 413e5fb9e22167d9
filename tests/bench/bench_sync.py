"""sync-relay benchmark: fan-out latency and durable updates/s, beside a plain broadcast floor.

    .venv/bin/python tests/bench/bench_sync.py [--quick]

In one run:

  fan-out N    one small Yjs update sent by one client until every one of N readers has it
               (p50/p99 over the rounds), N = 1, 10, 100, on a real kiki-sync-relay process
  durable/s    updates a writer sends back to back, each relayed (so durable) to one reader,
               per second, for one session and for 4 sessions at once
  memory       the relay's RSS growth per live session (one client joined), and per hibernated
               session (the clients gone, idle_timeout passed)

beside the floor: a plain ``websockets`` server relaying the same bytes to every other client
(no CRDT, no disk), measured the same way; the floor runs in the benchmark's own process,
sharing its core with the clients. pycrdt-websocket's server and Hocuspocus are not measured
here yet.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pycrdt import Doc, Map, create_update_message
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, broadcast, serve

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kikitest.sync_fixtures import DeviceRelay


def update(i: int) -> bytes:
    doc: Doc[Any] = Doc()
    doc.get("map", type=Map)[f"k{i}"] = i
    return create_update_message(doc.get_update())


async def drain_until(ws: ClientConnection, want: bytes) -> None:
    while await ws.recv() != want:
        pass


async def fanout(urls: list[str], rounds: int) -> tuple[float, float]:
    sender, *readers = [await connect(u, max_size=None) for u in urls]
    await asyncio.sleep(0.3)
    times = []
    for i in range(rounds):
        message = update(i)
        start = time.perf_counter()
        await sender.send(message)
        await asyncio.gather(*(drain_until(r, message) for r in readers))
        times.append(time.perf_counter() - start)
    for ws in (sender, *readers):
        await ws.close()
    times.sort()
    return statistics.median(times) * 1e3, times[int(len(times) * 0.99) - 1] * 1e3


async def throughput(urls: list[tuple[str, str]], count: int) -> float:
    pairs = [(await connect(w, max_size=None), await connect(r, max_size=None)) for w, r in urls]
    await asyncio.sleep(0.3)
    messages = [update(i) for i in range(count)]

    async def one(writer: ClientConnection, reader: ClientConnection) -> None:
        for m in messages:
            await writer.send(m)
        await drain_until(reader, messages[-1])

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

    server = await serve(handler, "127.0.0.1", 0, max_size=None)
    port = server.sockets[0].getsockname()[1]
    return server, port


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def main(quick: bool) -> None:
    rounds = 30 if quick else 200
    count = 500 if quick else 5000
    with tempfile.TemporaryDirectory() as tmp:
        relay = DeviceRelay(Path(tmp), idle_timeout="1", rate="100000", burst="100000")
        relay.start()
        server, port = await floor_server()
        try:
            print(f"{'':24}{'relay':>22}{'floor (broadcast)':>24}")
            for n in (1, 10, 100):
                s = f"fan{n}"
                relay_urls = [relay.url(s, relay.token(s, "controller"))] * (n + 1)
                floor_urls = [f"ws://127.0.0.1:{port}/x"] * (n + 1)
                r50, r99 = await fanout(relay_urls, rounds)
                f50, f99 = await fanout(floor_urls, rounds)
                print(
                    f"fan-out to {n:>3} p50/p99 ms {r50:8.2f} {r99:8.2f}     {f50:8.2f} {f99:8.2f}"
                    f"   p50 ratio {r50 / f50:5.1f}x"
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
                floor = await throughput(
                    [(f"ws://127.0.0.1:{port}/{s}",) * 2 for s in names], count
                )
                print(
                    f"updates/s, {sessions} session(s) {rate:10.0f} durable  {floor:10.0f} relayed"
                    f"   ratio {rate / floor:5.2f}"
                )
            assert relay.proc is not None
            pid = relay.proc.pid
            n = 20 if quick else 200
            before = rss_kib(pid)
            clients = []
            for i in range(n):
                s = f"mem{i}"
                ws = await connect(relay.url(s, relay.token(s, "controller")))
                await ws.send(update(i))
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
    asyncio.run(main(parser.parse_args().quick))
