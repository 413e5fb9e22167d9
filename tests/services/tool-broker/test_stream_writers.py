"""A connection's stream writer against a real socket, without the broker: the fan-out's queues
written as separate notification lines, every ready subscription in turn (at most
``PER_SUB_ITEMS`` each), in ``seq`` order per subscription; what finds the writer idle and the
transport empty written once the input being read is handled, or in the next turn outside a
read; a writer that fails does not hold up the others; closing the writer stops it."""

from __future__ import annotations

import asyncio
import os
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from kiki_tool_broker.stream_writers import PER_SUB_ITEMS, WRITE_ITEMS, StreamWriters
from kiki_tool_broker.streams import Readable, StreamFanout
from kikitest import until
from libkiki.peer import PeerCred
from libkiki.rpc import Connection, connect_unix
from libkiki.rpc.later import input_ends, input_starts

pytestmark = pytest.mark.integration

NSID = "org.example.ticks"
PROVIDER, CLIENT = 1, 7


async def test_the_writer_serves_its_ready_subscriptions_in_turn(sockdir: Path) -> None:
    lines: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def reader(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while line := await r.readline():
            lines.put_nowait(orjson.loads(line))

    path = sockdir / "peer.sock"
    server = await asyncio.start_unix_server(reader, str(path))
    fanout = StreamFanout(max_queue_messages=64)
    fanout.declare(PROVIDER, [NSID])
    counters: Counter[str] = Counter()
    writers = StreamWriters(fanout, counters)
    async with server, connect_unix(path) as conn:
        subs, upstreams = [], []
        for room in "abc":
            subscribed, actions = fanout.subscribe(CLIENT, NSID, {"room": room})
            subs.append(subscribed.sub)
            upstreams += [u for u, (_, _, p) in fanout.upstreams().items() if p == {"room": room}]
            assert actions  # its upstream opens
        writers.open(CLIENT, conn)

        def carry(actions: list[Any]) -> None:
            for action in actions:
                if isinstance(action, Readable):
                    writers.readable(action.conn, action.sub)

        held: list[Any] = []
        for upstream in upstreams:
            held += fanout.upstream_opened(upstream)  # each queue: its live status
        writers.open(CLIENT, conn)  # once per connection
        assert len(writers) == 1
        # Everything is queued before the writer hears of it: 20 messages for each subscription.
        for n in range(20):
            for upstream in upstreams:
                held += fanout.publish(PROVIDER, upstream, {"n": n})
        input_starts()  # as if one read brought them all
        carry(held)
        input_ends()
        got = [await asyncio.wait_for(lines.get(), 10) for _ in range(3 * 21)]
        assert all("id" not in m for m in got)  # notifications, each on a line of its own
        # Round robin: each subscription's first turn (its live status and 7 messages) comes
        # before any second turn.
        first = [m["params"]["subscription"] for m in got[: 3 * PER_SUB_ITEMS]]
        assert [first[i * PER_SUB_ITEMS] for i in range(3)] == subs
        assert all(first.count(s) == PER_SUB_ITEMS for s in subs)
        for sub in subs:
            events = [m["params"] for m in got if m["params"]["subscription"] == sub]
            assert events[0] == {
                "subscription": sub,
                "state": "live",
                "reason": None,
                "interruptions": 0,
            }
            assert [e["seq"] for e in events[1:]] == list(range(1, 21))
        await until(lambda: counters["stream_notifications"] == 3 * 21, "all counted")
        task = writers.writers[CLIENT].task
        assert task is not None
        assert not task.done()
        writers.close(CLIENT)
        assert len(writers) == 0
        # Closing stops the writer's task, not only forgets it (a task left waiting would
        # never finish here).
        await asyncio.wait({task}, timeout=10)  # unlike wait_for, it cancels nothing itself
        assert task.done()
        for upstream in upstreams:  # readable again, but without a writer: nothing is written
            carry(fanout.publish(PROVIDER, upstream, {"n": 99}))
        await conn.notify("ping")  # a line of our own after them: nothing came between
        assert (await asyncio.wait_for(lines.get(), 10))["method"] == "ping"


async def test_what_finds_the_writer_idle_is_written_once_the_input_is_handled(
    sockdir: Path,
) -> None:
    lines: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def reader(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while line := await r.readline():
            lines.put_nowait(orjson.loads(line))

    path = sockdir / "peer.sock"
    server = await asyncio.start_unix_server(reader, str(path))
    fanout = StreamFanout(max_queue_messages=64)
    fanout.declare(PROVIDER, [NSID])
    counters: Counter[str] = Counter()
    writers = StreamWriters(fanout, counters)
    async with server, connect_unix(path) as conn:
        subs, upstreams = [], []
        for room in "ab":
            subscribed, _ = fanout.subscribe(CLIENT, NSID, {"room": room})
            subs.append(subscribed.sub)
            upstreams += [u for u, (_, _, p) in fanout.upstreams().items() if p == {"room": room}]
        a, b = subs
        writers.open(CLIENT, conn)
        writer = writers.writers[CLIENT]

        def carry(actions: list[Any]) -> None:
            for action in actions:
                if isinstance(action, Readable):
                    writers.readable(action.conn, action.sub)

        # No input being read (a request's task queued it): not written in the call itself,
        # which comes before the answer the task is writing, but in the next turn of the event
        # loop, by the flush rather than by the task.
        carry(fanout.upstream_opened(upstreams[0]))
        assert counters["stream_notifications"] == 0
        assert list(writer.ready) == [a]
        await asyncio.sleep(0)  # one turn: the flush was scheduled before this task's wake-up
        assert counters["stream_notifications"] == 1
        assert not writer.wake.is_set()
        assert not writer.ready
        assert fanout.pending(a) == 0
        status = await asyncio.wait_for(lines.get(), 10)
        assert status["method"] == "kiki/streamStatus"

        # While a read is handled, what it queues waits for its end, then leaves in one turn
        # of the writer (round robin, as the task would write it).
        input_starts()
        carry(fanout.upstream_opened(upstreams[1]))
        for n in range(3):
            carry(fanout.publish(PROVIDER, upstreams[0], {"n": n}))
            carry(fanout.publish(PROVIDER, upstreams[1], {"n": n}))
        assert counters["stream_notifications"] == 1
        input_ends()
        assert counters["stream_notifications"] == 1 + 7
        assert not writer.wake.is_set()
        got = [await asyncio.wait_for(lines.get(), 10) for _ in range(7)]
        assert [(m["params"]["subscription"], m["method"]) for m in got] == [
            (b, "kiki/streamStatus"),  # readable first, so first in line
            (b, "kiki/event"),
            (b, "kiki/event"),
            (b, "kiki/event"),
            (a, "kiki/event"),
            (a, "kiki/event"),
            (a, "kiki/event"),
        ]

        # More than one turn's worth: one turn (WRITE_ITEMS, round robin) now, the rest is
        # the task's.
        each = WRITE_ITEMS // 2 + PER_SUB_ITEMS // 2
        held: list[Any] = []
        for n in range(each):
            for upstream in upstreams:
                held += fanout.publish(PROVIDER, upstream, {"n": n})
        input_starts()
        carry(held)
        input_ends()
        assert counters["stream_notifications"] == 8 + WRITE_ITEMS
        assert writer.wake.is_set()
        assert list(writer.ready) == [a, b]  # a's publish came first
        got = [await asyncio.wait_for(lines.get(), 10) for _ in range(2 * each)]
        seqs = {
            s: [m["params"]["seq"] for m in got if m["params"]["subscription"] == s] for s in subs
        }
        assert seqs == {s: list(range(4, 4 + each)) for s in subs}
        await until(lambda: not writer.wake.is_set(), "the task took its turn")
        writers.close(CLIENT)


async def test_a_connection_behind_leaves_the_item_to_the_task() -> None:
    ours, theirs = socket.socketpair()
    me = PeerCred(pid=os.getpid(), uid=os.getuid(), gid=os.getgid())
    fanout = StreamFanout(max_queue_messages=64)
    fanout.declare(PROVIDER, [NSID])
    counters: Counter[str] = Counter()
    writers = StreamWriters(fanout, counters)
    try:
        async with Connection(ours, peer=me) as conn:
            subscribed, _ = fanout.subscribe(CLIENT, NSID, {"room": "a"})
            (upstream,) = fanout.upstreams()
            writers.open(CLIENT, conn)
            conn.set_write_limits(high=1 << 20, sndbuf=4096)
            while not conn.write_buffer_size:  # the peer never reads: the kernel fills up
                conn.try_notify("pad", {"pad": "x" * 4096})
            for action in fanout.upstream_opened(upstream):
                if isinstance(action, Readable):
                    writers.readable(action.conn, action.sub)
            await asyncio.sleep(0)  # outside a read: flushed in the next turn
            writer = writers.writers[CLIENT]
            assert writer.wake.is_set()
            assert list(writer.ready) == [subscribed.sub]
            assert counters["stream_notifications"] == 0
            writers.close(CLIENT)
    finally:
        theirs.close()


async def _line_server(
    path: Path,
) -> tuple[asyncio.Server, asyncio.Queue[tuple[int, dict[str, Any]]]]:
    """A server on ``path`` that puts every line it reads in one queue, with the number of the
    connection (in accepting order) it came on."""
    lines: asyncio.Queue[tuple[int, dict[str, Any]]] = asyncio.Queue()
    accepted = iter(range(1 << 30))

    async def reader(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        n = next(accepted)
        while line := await r.readline():
            lines.put_nowait((n, orjson.loads(line)))

    return await asyncio.start_unix_server(reader, str(path)), lines


async def test_a_read_writes_what_it_queued_even_with_a_flush_due_next_turn(
    sockdir: Path,
) -> None:
    server, lines = await _line_server(sockdir / "peer.sock")
    fanout = StreamFanout(max_queue_messages=64)
    fanout.declare(PROVIDER, [NSID])
    counters: Counter[str] = Counter()
    writers = StreamWriters(fanout, counters)
    async with server, connect_unix(sockdir / "peer.sock") as conn:
        upstreams = []
        for room in "ab":
            fanout.subscribe(CLIENT, NSID, {"room": room})
            upstreams += [u for u, (_, _, p) in fanout.upstreams().items() if p == {"room": room}]
        writers.open(CLIENT, conn)
        for action in fanout.upstream_opened(upstreams[0]):  # outside a read: next turn
            if isinstance(action, Readable):
                writers.readable(action.conn, action.sub)
        assert counters["stream_notifications"] == 0
        # A read that makes another subscription readable before that turn: written at its
        # end (with what was due), before anything the read answers, not a turn after it.
        input_starts()
        for action in fanout.upstream_opened(upstreams[1]):
            if isinstance(action, Readable):
                writers.readable(action.conn, action.sub)
        input_ends()
        assert counters["stream_notifications"] == 2
        got = [(await asyncio.wait_for(lines.get(), 10))[1] for _ in range(2)]
        assert [m["method"] for m in got] == ["kiki/streamStatus", "kiki/streamStatus"]
        await asyncio.sleep(0)  # the next turn's flush finds nothing left
        assert counters["stream_notifications"] == 2
        assert not writers.writers[CLIENT].wake.is_set()
        writers.close(CLIENT)


class _FaultyOnce(StreamFanout):
    """A fan-out whose first drain of ``bad`` raises: a fault in writing one connection."""

    bad = -1

    def drain(self, sub: int, max_items: int | None = None) -> list[Any]:
        if sub == self.bad:
            self.bad = -1
            raise RuntimeError("drain fault")
        return super().drain(sub, max_items)


async def test_a_writer_that_fails_leaves_the_others_written_and_its_task_woken(
    sockdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server, lines = await _line_server(sockdir / "peer.sock")
    fanout = _FaultyOnce(max_queue_messages=64)
    fanout.declare(PROVIDER, [NSID])
    counters: Counter[str] = Counter()
    writers = StreamWriters(fanout, counters)
    other = CLIENT + 1
    async with (
        server,
        connect_unix(sockdir / "peer.sock") as first,
        connect_unix(sockdir / "peer.sock") as second,
    ):
        bad, _ = fanout.subscribe(CLIENT, NSID, {"room": "a"})
        good, _ = fanout.subscribe(other, NSID, {"room": "a"})
        (upstream,) = fanout.upstreams()
        writers.open(CLIENT, first)
        writers.open(other, second)
        fanout.bad = bad.sub
        held = fanout.upstream_opened(upstream) + fanout.publish(PROVIDER, upstream, {"n": 1})
        input_starts()
        for action in held:
            if isinstance(action, Readable):
                writers.readable(action.conn, action.sub)
        # The failing writer comes first in the flush.
        assert list(writers._due) == [CLIENT, other]
        input_ends()
        assert "drain fault" in caplog.text
        assert counters["stream_notifications"] == 2  # the other's, written all the same
        assert writers.writers[CLIENT].wake.is_set()  # the failed one's task takes it over
        got = [await asyncio.wait_for(lines.get(), 10) for _ in range(4)]
        by_sub: dict[int, list[str]] = {}
        for _, m in got:
            by_sub.setdefault(m["params"]["subscription"], []).append(m["method"])
        assert by_sub == {s: ["kiki/streamStatus", "kiki/event"] for s in (bad.sub, good.sub)}
        await until(lambda: counters["stream_notifications"] == 4, "the task wrote it")
        writers.close(CLIENT)
        writers.close(other)
