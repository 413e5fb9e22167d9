"""A connection's stream writer against a real socket, without the broker: the fan-out's queues
written as separate notification lines, every ready subscription in turn (at most
``PER_SUB_ITEMS`` each), in ``seq`` order per subscription; closing the writer stops it."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from kiki_tool_broker.stream_writers import PER_SUB_ITEMS, StreamWriters
from kiki_tool_broker.streams import Readable, StreamFanout
from kikitest import until
from libkiki.rpc import connect_unix

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

        for upstream in upstreams:
            carry(fanout.upstream_opened(upstream))  # each queue: its live status
        writers.open(CLIENT, conn)  # once per connection
        assert len(writers) == 1
        # Everything is queued before the writer runs: 20 messages for each subscription.
        for n in range(20):
            for upstream in upstreams:
                carry(fanout.publish(PROVIDER, upstream, {"n": n}))
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
