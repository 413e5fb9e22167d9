"""The IMU's schedule (sans-I/O): stamps never go back, whatever the wake-ups and clock reads.

Hypothesis plays the machine: a writer that wakes late by any amount (a busy CPU, a stopped
VM), is descheduled for any time between its look at the clock and each write (page faults,
I/O pressure), and is paced either way the publisher paces it -- a thread that sleeps to the
schedule's next wake-up, or an interval timer at a fixed tick -- switching between the two and
between tick lengths at any point, as subscribers come and go.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiki_sensor_publisher.clock import SampleSchedule

pytestmark = pytest.mark.unit

MS = 1_000_000


@dataclass(frozen=True)
class Pass:
    thread: bool  # paced by the thread (sleeps to wake_ns) or by the timer (fixed ticks)
    tick_periods: int  # the tick, in sample periods (every sample .. 10 ms at 1 kHz)
    wake_delay: int  # how late the wake-up came, ns
    stalls: tuple[int, ...]  # time lost before each write's clock reading, ns


delays = st.one_of(
    st.integers(0, 50_000),  # timer noise
    st.integers(0, 5 * MS),  # a busy machine
    st.integers(0, 300 * MS),  # a stopped one: past the skip-ahead
)
passes = st.builds(
    Pass,
    thread=st.booleans(),
    tick_periods=st.integers(1, 10),
    wake_delay=delays,
    stalls=st.lists(st.one_of(st.just(0), st.integers(0, 3 * MS)), max_size=12).map(tuple),
)


@settings(max_examples=400, deadline=None)
@given(
    period=st.sampled_from([50_000, 100_000, 1_000_000, 1_000_001, 10_000_000]),
    start=st.integers(0, 10**12),
    plan=st.lists(passes, min_size=1, max_size=40),
)
def test_stamps_increase_under_any_delays_and_mode_switches(
    period: int, start: int, plan: list[Pass]
) -> None:
    schedule = SampleSchedule(period, start)
    clock = start
    timer_origin = start
    stamps: list[int] = []
    indices: list[int] = []
    for p in plan:
        tick = p.tick_periods * period
        if p.thread:
            target = schedule.wake_ns(tick)
        else:  # the next expiry of an interval timer armed at timer_origin
            elapsed = max(0, clock - timer_origin)
            target = timer_origin + (elapsed // tick + 1) * tick
        clock = max(clock, target) + p.wake_delay
        due = schedule.due(clock)
        for i in range(due):
            clock += p.stalls[i % len(p.stalls)] if p.stalls else 0
            scheduled = schedule.next_ns
            index, stamp = schedule.take(clock)
            # Never later than the reading it was taken at (beyond the nanoseconds that keep
            # stamps apart), never more than half a period before its due time.
            assert stamp <= max(clock, stamps[-1] + 1 if stamps else clock)
            assert stamp >= scheduled - period // 2
            stamps.append(stamp)
            indices.append(index)
        timer_origin = clock if p.thread else timer_origin  # a switch re-arms the timer
    assert all(b > a for a, b in itertools.pairwise(stamps)), stamps
    assert indices == list(range(len(indices)))


def test_a_write_descheduled_after_its_look_does_not_back_date_the_next() -> None:
    # The report's case: sample 41 taken on time but written 1.84 ms late, at 1 kHz.
    schedule = SampleSchedule(MS, 0)
    schedule.next_ns = 41 * MS
    schedule.index = 41
    assert schedule.due(41 * MS) == 1
    index, stamp41 = schedule.take(41 * MS + 1_840_000)  # descheduled before its write
    assert (index, stamp41) == (41, 41 * MS)  # late: its due time, not its late reading
    assert schedule.due(43 * MS) == 2
    stamps = [schedule.take(43 * MS)[1] for _ in range(2)]
    assert stamps == [42 * MS, 43 * MS]
    assert stamp41 < stamps[0]


def test_on_time_samples_carry_their_reading_and_late_ones_their_due_time() -> None:
    schedule = SampleSchedule(MS, 0)
    assert schedule.due(0) == 1
    assert schedule.take(300_000) == (0, 300_000)  # within half a period: the reading
    assert schedule.due(10 * MS) == 10  # a 10 ms tick: samples 1..10 are due
    taken = [schedule.take(10 * MS) for _ in range(10)]
    assert taken[:-1] == [(n, n * MS) for n in range(1, 10)]  # late: evenly spaced
    assert taken[-1] == (10, 10 * MS)
    assert schedule.due(10 * MS + 100) == 0


def test_a_long_stall_skips_ahead_and_keeps_indices() -> None:
    schedule = SampleSchedule(MS, 0)
    schedule.take(0)
    assert schedule.due(1_000 * MS) == 1  # not a thousand: the backlog is dropped
    assert schedule.take(1_000 * MS) == (1, 1_000 * MS)
    assert schedule.wake_ns(10 * MS) == 1_010 * MS


def test_a_stamp_never_equals_the_one_before() -> None:
    # Two samples taken at one reading (a clock coarser than the rate): apart by 1 ns.
    schedule = SampleSchedule(2, 0)
    assert schedule.due(0) == 1
    assert schedule.take(0) == (0, 0)
    assert schedule.due(1) == 1
    assert schedule.take(1) == (1, 1)
    assert schedule.take(1) == (2, 2)


def test_period_must_be_positive() -> None:
    with pytest.raises(ValueError, match="period"):
        SampleSchedule(0, 0)
