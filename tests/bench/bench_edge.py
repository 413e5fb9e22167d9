"""Edge benchmark: fan-out of one small update through the workerd Session object.

    .venv/bin/python tests/bench/bench_edge.py [--rounds N] [--quick]

One writer and 1, 10 and 100 pycrdt readers join a session of the edge Worker running under
``workerd serve`` (built and started as the tests do: tests/kikitest/edge_fixtures.py). Each
round the writer sets one map key (an update of a few dozen bytes) and waits until every
reader has applied it; the next round starts then. Reported per case, over every round:
p50/p99 of send -> one reader's apply (every reader's sample), and of send -> the last
reader's apply. Writer and readers share this one Python process and its event loop, so the
times include reading 100 sockets in turn; judge cases against each other, not against
servers measured with other clients.

Then, for the record: durable updates/s through one session (a writer pipelining small
updates, until a reader has the last), and workerd's resident memory per session with live
objects and once they are hibernated (their sockets still open). V8 keeps the heap it grew,
so the hibernated figure is what the process still holds, an upper bound on what a hibernated
session costs; on Cloudflare an evicted object holds no memory at all.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "libkiki" / "src"))

from pycrdt import (  # noqa: E402
    Doc,
    Map,
    YMessageType,
    YSyncMessageType,
    create_sync_message,
    create_update_message,
    handle_sync_message,
)
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402

from kikitest.edge_fixtures import EdgeServer, edge_server  # noqa: E402


class Round:
    """How many readers still lack the current round's key (or, with ``last``, whether the
    round ``last`` has come)."""

    def __init__(self, last: int | None = None) -> None:
        self.missing = 0
        self.last = last
        self.done = asyncio.Event()

    def start(self, readers: int) -> None:
        self.missing = readers
        self.done.clear()

    def arrived(self, key: int) -> None:
        self.missing -= 1
        if self.missing == 0 or key == self.last:
            self.done.set()


class Reader:
    """A pycrdt document joined as an observer; notes when each round's key arrives."""

    def __init__(self, ws: ClientConnection, round_: Round) -> None:
        self.ws = ws
        self.doc: Doc[Map[int]] = Doc()
        self.map = self.doc.get("map", type=Map)
        self.synced = asyncio.Event()
        self.seen: dict[int, int] = {}
        self.round = round_
        self.task = asyncio.create_task(self.read())

    async def read(self) -> None:
        async for message in self.ws:
            assert isinstance(message, bytes)
            if message[0] != YMessageType.SYNC:
                continue
            reply = handle_sync_message(message[1:], self.doc)
            now = time.monotonic_ns()
            if reply is not None:
                await self.ws.send(reply)
            if message[1] == YSyncMessageType.SYNC_STEP2:
                self.synced.set()
            elif message[1] == YSyncMessageType.SYNC_UPDATE:
                key = self.map.get("round")
                if key is not None and key not in self.seen:
                    self.seen[key] = now
                    self.round.arrived(key)


async def case(edge: EdgeServer, readers: int, rounds: int) -> tuple[list[float], list[float]]:
    name = f"bench-{readers}-{time.monotonic_ns()}"
    socks = [
        await connect(edge.url(name, edge.token(name, "observer")), max_size=None)
        for _ in range(readers)
    ]
    round_ = Round()
    clients = [Reader(ws, round_) for ws in socks]
    for client in clients:
        await client.ws.send(create_sync_message(client.doc))
    await asyncio.gather(*(c.synced.wait() for c in clients))
    writer_doc: Doc[Map[int]] = Doc()
    wmap = writer_doc.get("map", type=Map)
    one: list[float] = []
    every: list[float] = []
    async with connect(edge.url(name, edge.token(name, "controller"))) as writer:
        updates: list[bytes] = []
        writer_doc.observe(lambda event: updates.append(event.update))
        await writer.send(create_sync_message(writer_doc))
        for i in range(rounds + 5):  # the first rounds warm up the object and the sockets
            wmap["round"] = i
            message = create_update_message(updates.pop())
            round_.start(readers)
            sent = time.monotonic_ns()
            await writer.send(message)
            await asyncio.wait_for(round_.done.wait(), 30)
            if i < 5:
                continue
            times = [(c.seen[i] - sent) / 1e6 for c in clients]
            one.extend(times)
            every.append(max(times))
    for client in clients:
        await client.ws.close()
        client.task.cancel()
    return one, every


async def throughput(edge: EdgeServer, updates: int) -> float:
    """Durable updates/s through one session: a device writer sends ``updates`` small updates
    without waiting, until an observer has applied the last (each is in the object's SQLite
    log before it is relayed)."""
    name = f"bench-rate-{time.monotonic_ns()}"
    round_ = Round(last=updates - 1)
    reader = Reader(await connect(edge.url(name, edge.token(name, "observer"))), round_)
    await reader.ws.send(create_sync_message(reader.doc))
    await reader.synced.wait()
    writer_doc: Doc[Map[int]] = Doc()
    wmap = writer_doc.get("map", type=Map)
    messages: list[bytes] = []
    writer_doc.observe(lambda event: messages.append(create_update_message(event.update)))
    for i in range(updates):
        wmap["round"] = i
    round_.start(updates)
    async with connect(edge.url(name, edge.token(name, "device"))) as writer:
        start = time.monotonic()
        for message in messages:
            await writer.send(message)
        await asyncio.wait_for(round_.done.wait(), 120)
        elapsed = time.monotonic() - start
    await reader.ws.close()
    reader.task.cancel()
    return updates / elapsed


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def memory(edge: EdgeServer, sessions: int) -> tuple[float, float]:
    """workerd's resident memory per session (KiB) with ``sessions`` live objects (one client
    each, a map of 100 keys), and per session once they are hibernated with their sockets open
    (both beside workerd before the sessions)."""
    assert edge.proc is not None
    before = rss_kib(edge.proc.pid)
    clients: list[ClientConnection] = []
    for n in range(sessions):
        name = f"bench-mem-{n}-{time.monotonic_ns()}"
        doc: Doc[Map[int]] = Doc()
        with doc.transaction():
            for k in range(100):
                doc.get("map", type=Map)[f"k{k}"] = k
        ws = await connect(edge.url(name, edge.token(name, "device")))
        await ws.send(create_update_message(doc.get_update()))
        clients.append(ws)
    await asyncio.sleep(1)
    live = rss_kib(edge.proc.pid)
    await asyncio.sleep(15)  # idle: workerd evicts the objects after about 10 s
    hibernated = rss_kib(edge.proc.pid)
    for ws in clients:
        await ws.close()
    return (live - before) / sessions, (hibernated - before) / sessions


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="30 rounds a case")
    args = parser.parse_args()
    rounds = 30 if args.quick else args.rounds
    with edge_server() as edge:
        print(f"edge fan-out under workerd, {rounds} rounds a case (ms)")
        print(f"{'readers':>7}  {'p50 one':>8}  {'p99 one':>8}  {'p50 all':>8}  {'p99 all':>8}")
        for readers in (1, 10, 100):
            one, every = await case(edge, readers, rounds)
            print(
                f"{readers:>7}  {statistics.median(one):8.2f}  {pct(one, 0.99):8.2f}  "
                f"{statistics.median(every):8.2f}  {pct(every, 0.99):8.2f}",
                flush=True,
            )
        updates = 500 if args.quick else 5000
        rate = await throughput(edge, updates)
        print(f"durable updates/s, one session, {updates} pipelined: {rate:,.0f}", flush=True)
        sessions = 20 if args.quick else 100
        live, hibernated = await memory(edge, sessions)
        print(
            f"workerd RSS per session ({sessions} sessions): live {live:.0f} KiB, "
            f"hibernated {hibernated:.0f} KiB",
            flush=True,
        )


if __name__ == "__main__":
    asyncio.run(main())
