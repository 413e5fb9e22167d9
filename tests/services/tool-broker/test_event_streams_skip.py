"""A message that no subscriber can be given (the broker's own, rejected by its lexicon) is
told to each subscriber as lost: sequence numbers still count every message."""

from __future__ import annotations

import pytest

from kiki_tool_broker.streams import Lost, Message, OpenUpstream, Readable, StreamFanout

pytestmark = pytest.mark.unit


def test_a_skipped_message_is_a_lost_count_for_every_subscriber() -> None:
    fanout = StreamFanout()
    fanout.declare(7, ["org.example.own"])
    one, actions = fanout.subscribe(1, "org.example.own")
    [upstream] = [a.upstream for a in actions if isinstance(a, OpenUpstream)]
    two, _ = fanout.subscribe(2, "org.example.own")
    fanout.upstream_opened(upstream)
    fanout.drain(one.sub)
    fanout.drain(two.sub)
    fanout.publish(7, upstream, {"n": 1})
    assert fanout.skip(upstream) == []  # queues not empty: nothing new to wake
    fanout.publish(7, upstream, {"n": 3})
    for sub in (one.sub, two.sub):
        assert fanout.drain(sub) == [
            Message(sub, 1, {"n": 1}),
            Lost(sub, 1),
            Message(sub, 3, {"n": 3}),
        ]
    assert fanout.skip(upstream) == [Readable(1, one.sub), Readable(2, two.sub)]
    assert fanout.drain(one.sub) == [Lost(one.sub, 1)]
    assert fanout.counters["lost"] == 4
    assert fanout.skip(upstream + 1) == []  # an upstream already closed: nothing
