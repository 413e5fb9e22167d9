"""One subscriber's bounded queue, as pure state: the oldest messages go first, told as one
exact ``Lost`` in their place; interruptions and losses next to each other make one gap; the
end is last."""

from __future__ import annotations

import pytest

from kiki_tool_broker.stream_queue import (
    Ended,
    Lost,
    Message,
    QueueStats,
    Status,
    SubscriberQueue,
)

pytestmark = pytest.mark.unit

SUB = 5


def offer_all(queue: SubscriberQueue, ns: range, size: int = 10) -> int:
    """Offer ``{"n": n}`` for each n: how many queued messages were dropped for them."""
    return sum(queue.offer({"n": n}, size)[1] for n in ns)


def test_a_full_queue_drops_its_oldest_and_counts_them_exactly() -> None:
    queue = SubscriberQueue(max_messages=3, max_bytes=1 << 20)
    assert queue.offer({"n": 1}, 10) == (True, 0)  # it was empty: the writer is told
    assert queue.offer({"n": 2}, 10) == (False, 0)
    assert offer_all(queue, range(3, 11)) == 7
    assert queue.stats() == QueueStats(messages=3, bytes=30, items=4)  # and one gap
    items, ended = queue.drain(SUB)
    assert not ended
    assert items == [
        Lost(SUB, 7),
        Message(SUB, 8, {"n": 8}),
        Message(SUB, 9, {"n": 9}),
        Message(SUB, 10, {"n": 10}),
    ]
    assert queue.stats() == QueueStats(0, 0, 0)


def test_losses_after_a_partial_drain_are_counted_apart() -> None:
    queue = SubscriberQueue(max_messages=2, max_bytes=1 << 20)
    offer_all(queue, range(1, 5))
    assert queue.drain(SUB, max_items=2) == ([Lost(SUB, 2), Message(SUB, 3, {"n": 3})], False)
    offer_all(queue, range(5, 8))
    items, _ = queue.drain(SUB)
    assert items == [Lost(SUB, 2), Message(SUB, 6, {"n": 6}), Message(SUB, 7, {"n": 7})]


def test_the_queue_is_bounded_in_bytes() -> None:
    queue = SubscriberQueue(max_messages=100, max_bytes=100)
    for n in range(10):
        queue.offer({"n": n}, 30)
        assert queue.bytes <= 100
    items, _ = queue.drain(SUB)
    assert items == [Lost(SUB, 7)] + [Message(SUB, s, {"n": s - 1}) for s in (8, 9, 10)]


def test_an_interruption_next_to_losses_is_one_gap_however_often_it_comes() -> None:
    queue = SubscriberQueue(max_messages=2, max_bytes=1 << 20)
    offer_all(queue, range(1, 4))  # one lost
    assert queue.status("waiting", "providerGone", interrupted=True) is False  # not empty
    for _ in range(100):  # a provider flapping while nobody reads
        queue.status("live")
        queue.status("waiting", "providerGone", interrupted=True)
    queue.status("live")
    assert len(queue) == 4  # a gap, two messages, one gap: it did not grow
    items, _ = queue.drain(SUB)
    assert items == [
        Lost(SUB, 1),
        Message(SUB, 2, {"n": 2}),
        Message(SUB, 3, {"n": 3}),
        Status(SUB, "live", "providerGone", 101),
    ]


def test_a_skipped_message_is_a_loss_in_its_place() -> None:
    queue = SubscriberQueue(max_messages=4, max_bytes=1 << 20)
    queue.offer({"n": 1}, 10)
    queue.skip()
    queue.offer({"n": 3}, 10)
    items, _ = queue.drain(SUB)
    assert items == [Message(SUB, 1, {"n": 1}), Lost(SUB, 1), Message(SUB, 3, {"n": 3})]


def test_the_end_is_drained_last_and_says_so() -> None:
    queue = SubscriberQueue(max_messages=4, max_bytes=1 << 20)
    queue.offer({"n": 1}, 10)
    assert queue.end(Ended(SUB, "shutdown")) is False  # behind what is queued
    assert queue.drain(SUB, max_items=1) == ([Message(SUB, 1, {"n": 1})], False)
    assert queue.drain(SUB) == ([Ended(SUB, "shutdown")], True)
    queue.offer({"n": 2}, 10)
    queue.clear()
    assert queue.stats() == QueueStats(0, 0, 0)


def test_the_end_of_an_empty_queue_makes_it_readable() -> None:
    queue = SubscriberQueue(max_messages=4, max_bytes=1 << 20)
    # Nothing queued: the end is the first item, so the subscriber must be woken to read it.
    assert queue.end(Ended(SUB, "unsubscribed")) is True
    assert queue.drain(SUB) == ([Ended(SUB, "unsubscribed")], True)
