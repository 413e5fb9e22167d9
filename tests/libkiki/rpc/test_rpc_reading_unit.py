"""The Reader on its own: a chunk of input decoded, each event routed, the chunk's writes and
after_input callbacks once it is handled; a fault in a route ends the read, not the thread's
read depth."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from libkiki.framing import LineDecoder
from libkiki.rpc import after_input, reading_input
from libkiki.rpc.link import Link
from libkiki.rpc.messages import (
    CancelRequested,
    Incoming,
    ProgressReceived,
    ResponseReceived,
    UnmatchedResponse,
)
from libkiki.rpc.protocol import RpcCore
from libkiki.rpc.reading import Reader, Routes

pytestmark = pytest.mark.unit


class Seen:
    """Records what the reader routes, and lets a route fail."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.released: list[int] = []
        self.broken = 0
        self.ended: list[bool] = []
        self.fail_on: str | None = None

    def route(self, kind: str) -> Any:
        def record(event: Any) -> None:
            self.events.append((kind, event))
            if kind == self.fail_on:
                raise RuntimeError("a route failing")

        return record


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()  # the Link's, for a full transport: never run here
    yield loop
    loop.close()


def reader(
    seen: Seen, loop: asyncio.AbstractEventLoop, **override: Any
) -> tuple[Reader, Link, RpcCore]:
    """A reader on a core and a link with no transport; ``override`` replaces routes."""
    core = RpcCore(max_in_flight=4)
    link = Link(loop, seen.released.append)
    kinds = ("incoming", "send", "response", "cancel", "progress", "unmatched")
    routes = Routes(**{kind: override.get(kind) or seen.route(kind) for kind in kinds})

    def broken() -> None:
        seen.broken += 1

    return (
        Reader(link, LineDecoder(1024), core.receive, routes, broken, seen.ended.append, "t"),
        link,
        core,
    )


def line(message: dict[str, Any]) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", **message}) + b"\n"


def test_each_event_of_a_chunk_goes_to_its_route_in_order(loop: asyncio.AbstractEventLoop) -> None:
    seen = Seen()
    read, _, core = reader(seen, loop)
    rid, _ = core.request("ours", {"x": 1}, progress=True)
    chunk = b"".join(
        [
            line({"id": 1, "method": "theirs"}),
            line({"method": "notifications/progress", "params": {"progressToken": rid}}),
            line({"id": rid, "result": 2}),
            line({"method": "notifications/cancelled", "params": {"requestId": 1}}),
            line({"id": 99, "result": 3}),
            b"not json\n",
        ]
    )
    read.received(chunk[:7])  # a line split over two reads is one message
    read.received(chunk[7:])
    kinds = [kind for kind, _ in seen.events]
    assert kinds == ["incoming", "progress", "response", "cancel", "unmatched", "send"]
    assert isinstance(seen.events[0][1], Incoming)
    assert isinstance(seen.events[1][1], ProgressReceived)
    assert isinstance(seen.events[2][1], ResponseReceived)
    assert seen.events[2][1].result == 2
    assert isinstance(seen.events[3][1], CancelRequested)
    assert isinstance(seen.events[4][1], UnmatchedResponse)
    assert orjson.loads(seen.events[5][1])["error"]["code"] == -32700


def test_after_input_waits_for_the_end_of_the_chunk(loop: asyncio.AbstractEventLoop) -> None:
    seen = Seen()
    order: list[str] = []

    def on_incoming(event: Incoming) -> None:
        assert reading_input()
        after_input(lambda: order.append(f"after {event.method}"))
        order.append(event.method)

    read, _, _ = reader(seen, loop, incoming=on_incoming)
    read.received(line({"method": "a"}) + line({"method": "b"}))
    assert order == ["a", "b", "after a", "after b"]
    assert not reading_input()


def test_a_failing_route_breaks_the_connection_and_still_ends_the_read(
    loop: asyncio.AbstractEventLoop,
) -> None:
    seen = Seen()
    seen.fail_on = "incoming"
    read, _, _ = reader(seen, loop)
    ran: list[str] = []
    read.received(line({"id": 1, "method": "x"}) + line({"id": 2, "method": "y"}))
    assert seen.broken == 1
    assert [kind for kind, _ in seen.events] == ["incoming"]  # the rest of the chunk is dropped
    assert not reading_input()  # a depth left raised would hold every later after_input
    after_input(lambda: ran.append("at once"))
    assert ran == ["at once"]


def test_a_stopped_reader_drops_input(loop: asyncio.AbstractEventLoop) -> None:
    seen = Seen()
    read, _, _ = reader(seen, loop)
    read.stopped = True
    read.received(line({"id": 1, "method": "x"}))
    assert seen.events == []
    read.eof_received()
    read.connection_lost(None)
    assert seen.ended == [False, True]


def test_slots_answered_in_a_chunk_are_released_when_it_is_handled(
    loop: asyncio.AbstractEventLoop,
) -> None:
    seen = Seen()
    released_during: list[list[int]] = []

    def answer_at_once(event: Incoming) -> None:
        link.release_written(event.slot)
        released_during.append(list(seen.released))

    read, link, _ = reader(seen, loop, incoming=answer_at_once)
    read.received(line({"id": 1, "method": "x"}) + line({"id": 2, "method": "y"}))
    assert released_during == [[], []]  # not while the chunk is read
    assert len(seen.released) == 2
    link.hold()
    link.flush()
    assert len(seen.released) == 2  # released once: the chunk's list was emptied
