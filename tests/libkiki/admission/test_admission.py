"""The admission core, the refusal log budget and the shared frame buffer pool."""

from __future__ import annotations

import struct
from collections import Counter

import pytest

from libkiki.admission import MAX_LINGERING, Admission, AdmissionLimits, LogBudget, Refused, Ticket
from libkiki.errors import LimitExceeded
from libkiki.framing import BufferPool, FrameDecoder, Oversized

pytestmark = pytest.mark.unit


def test_limits_default_to_a_quarter_and_exempt_root_and_the_service() -> None:
    limits = AdmissionLimits.of(256, own_uid=990)
    assert (limits.max_connections, limits.max_per_user, limits.exempt) == (
        256,
        64,
        frozenset({0, 990}),
    )
    assert AdmissionLimits.of(2).max_per_user == 1
    assert AdmissionLimits.of(8, 100).max_per_user == 8  # never above the total


def test_one_user_holds_its_share_and_another_still_gets_in() -> None:
    counters: Counter[str] = Counter()
    gate = Admission(AdmissionLimits(max_connections=6, max_per_user=2), counters)
    first, second = gate.admit(1000), gate.admit(1000)
    refused = gate.admit(1000)
    assert isinstance(first, Ticket)
    assert isinstance(second, Ticket)
    assert isinstance(refused, Refused)
    assert refused.per_user
    assert refused.error.to_jsonrpc()["code"] == -32005
    assert refused.error.data == {"limit": 2}
    assert isinstance(gate.admit(1001), Ticket)
    assert counters == Counter(
        connections=3,
        connections_accepted=4,
        connections_refused=1,
        connections_refused_user=1,
    )
    gate.release(first)
    gate.release(first)  # twice is harmless
    assert isinstance(gate.admit(1000), Ticket)
    assert counters["connections"] == 3


def test_the_total_holds_for_exempt_uids_too_and_released_uids_leave_the_table() -> None:
    gate = Admission(AdmissionLimits(max_connections=3, max_per_user=1))
    tickets = [gate.admit(0) for _ in range(3)]  # root: held only to the total
    assert all(isinstance(t, Ticket) for t in tickets)
    over = gate.admit(0)
    assert isinstance(over, Refused)
    assert not over.per_user
    for ticket in tickets:
        assert isinstance(ticket, Ticket)
        gate.release(ticket)
    assert gate.live == 0
    assert not gate.by_uid


def test_refused_peers_held_to_linger_are_bounded() -> None:
    gate = Admission(AdmissionLimits(max_connections=1, max_per_user=1))
    assert isinstance(gate.admit(5), Ticket)
    refusals = [gate.admit(5) for _ in range(MAX_LINGERING + 3)]
    assert [isinstance(r, Refused) and r.linger for r in refusals].count(True) == MAX_LINGERING
    gate.lingered()
    again = gate.admit(5)
    assert isinstance(again, Refused)
    assert again.linger


def test_log_budget_allows_a_burst_then_one_per_interval_and_counts_the_rest() -> None:
    budget = LogBudget(burst=3, interval=10.0)
    allowed = [budget.allow(100.0) for _ in range(1000)]
    assert allowed.count(True) == 3
    assert budget.take_suppressed() == 997
    assert budget.take_suppressed() == 0
    assert not budget.allow(105.0)  # half a token
    assert budget.allow(110.0)
    # A long quiet spell refills no more than the burst.
    assert [budget.allow(10_000.0) for _ in range(5)].count(True) == 3


def frame_header(size: int) -> bytes:
    return struct.pack("<I", size)


def test_decoders_sharing_a_pool_are_bounded_together_and_give_back_on_close() -> None:
    pool = BufferPool(1000)
    a, b = FrameDecoder(800, pool.account(7)), FrameDecoder(800, pool.account(8))
    assert list(a.feed(frame_header(700) + b"x" * 600)) == []
    assert pool.used == 604
    out = list(b.feed(frame_header(700) + b"y" * 600))
    assert len(out) == 1
    assert isinstance(out[0], Oversized)
    assert isinstance(out[0].error, LimitExceeded)
    assert b.pending == 0  # b's bytes went back at once
    assert pool.used == 604
    assert list(a.feed(b"x" * 100)) == [b"x" * 700]  # complete: its bytes go back
    assert pool.used == 0
    assert list(a.feed(frame_header(10) + b"z")) == []
    a.close()
    assert pool.used == 0
    assert a.pending == 0
    assert pool.by_uid == {}


def test_one_uid_holds_at_most_its_share_of_the_pool_and_others_still_get_theirs() -> None:
    pool = BufferPool(1000, per_user=300, exempt=frozenset({0}))
    greedy = [FrameDecoder(800, pool.account(7)) for _ in range(3)]
    assert list(greedy[0].feed(frame_header(700) + b"x" * 250)) == []
    out = list(greedy[1].feed(frame_header(700) + b"x" * 250))
    assert isinstance(out[0], Oversized)
    assert "per user" in out[0].error.message
    other = FrameDecoder(800, pool.account(8))
    assert list(other.feed(frame_header(700) + b"y" * 250)) == []
    root = FrameDecoder(800, pool.account(0))  # exempt: held only to the total
    assert list(root.feed(frame_header(700) + b"z" * 400)) == []
    assert pool.by_uid == {7: 254, 8: 254, 0: 404}
