"""Idempotent retries (``kiki_tool_broker.idempotency``): first call runs, a concurrent duplicate
joins it, a later one replays its answer within the window, other arguments are an error, and
memory stays bounded."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiki_tool_broker.idempotency import (
    MAX_KEY_LENGTH,
    IdempotencyCache,
    Join,
    Replay,
    Run,
)
from libkiki.audit import args_hash
from libkiki.errors import InvalidParams, LimitExceeded

pytestmark = pytest.mark.unit

ALICE = "remote:alice/session-1"
BOB = "uid:1000"
TOOL = "org.example.pay"
ARGS = args_hash({"amount": 5})


def run(cache: IdempotencyCache, key: str, now: float = 0.0, principal: str = ALICE) -> Run:
    outcome = cache.begin(principal, key, TOOL, ARGS, now)
    assert isinstance(outcome, Run)
    return outcome


def test_first_call_runs_a_concurrent_duplicate_joins_a_later_one_replays() -> None:
    cache = IdempotencyCache()
    first = run(cache, "k1")
    assert cache.begin(ALICE, "k1", TOOL, ARGS, 1.0) == Join(first.token)
    assert cache.begin(ALICE, "k1", TOOL, ARGS, 1.5) == Join(first.token)
    assert cache.finish(first.token, {"ok": True}, 11, 2.0) == 2  # both joined get it
    assert cache.begin(ALICE, "k1", TOOL, ARGS, 3.0) == Replay({"ok": True}, 2.0)
    assert cache.counters == {"runs": 1, "joins": 2, "replays": 1, "mismatches": 0, "evicted": 0}


def test_keys_are_per_caller() -> None:
    cache = IdempotencyCache()
    first = run(cache, "k1")
    second = run(cache, "k1", principal=BOB)
    assert first.token != second.token


def test_other_arguments_or_another_tool_under_the_same_key_are_refused() -> None:
    cache = IdempotencyCache()
    first = run(cache, "k1")
    with pytest.raises(InvalidParams) as err:
        cache.begin(ALICE, "k1", TOOL, args_hash({"amount": 6}), 1.0)
    assert err.value.data == {"rule": "idempotencyKey", "tool": TOOL}
    cache.finish(first.token, "done", 4, 2.0)
    with pytest.raises(InvalidParams):
        cache.begin(ALICE, "k1", TOOL, args_hash({"amount": 6}), 3.0)
    with pytest.raises(InvalidParams):
        cache.begin(ALICE, "k1", "org.example.refund", ARGS, 3.0)
    assert cache.counters["mismatches"] == 3
    assert cache.begin(ALICE, "k1", TOOL, ARGS, 4.0) == Replay("done", 2.0)  # still there


def test_an_answer_is_replayed_for_ttl_seconds_after_it() -> None:
    cache = IdempotencyCache(ttl=10.0)
    cache.finish(run(cache, "k1", now=0.0).token, "done", 4, 5.0)
    assert isinstance(cache.begin(ALICE, "k1", TOOL, ARGS, 14.999), Replay)
    assert isinstance(cache.begin(ALICE, "k1", TOOL, ARGS, 15.0), Run)  # the window is over


def test_a_running_call_is_never_expired_or_evicted() -> None:
    cache = IdempotencyCache(ttl=1.0, max_entries=2)
    first = run(cache, "k1", now=0.0)
    for n in range(5):
        cache.finish(run(cache, f"other{n}", now=100.0).token, n, 1, 100.0)
    assert cache.begin(ALICE, "k1", TOOL, ARGS, 1000.0) == Join(first.token)


def test_the_oldest_answers_go_first_past_max_entries() -> None:
    cache = IdempotencyCache(max_entries=3)
    for n in range(5):
        cache.finish(run(cache, f"k{n}", now=n).token, n, 1, float(n))
    assert len(cache) == 3
    assert cache.counters["evicted"] == 2
    assert isinstance(cache.begin(ALICE, "k0", TOOL, ARGS, 10.0), Run)  # forgotten: runs again
    assert cache.begin(ALICE, "k4", TOOL, ARGS, 10.0) == Replay(4, 4.0)


def test_the_oldest_answers_go_first_past_max_bytes() -> None:
    cache = IdempotencyCache(max_bytes=100, max_result_bytes=60)
    for n in range(3):
        cache.finish(run(cache, f"k{n}").token, n, 40, float(n))
    assert cache.bytes == 80
    assert isinstance(cache.begin(ALICE, "k0", TOOL, ARGS, 10.0), Run)
    assert cache.begin(ALICE, "k1", TOOL, ARGS, 10.0) == Replay(1, 1.0)


def test_an_answer_too_large_to_keep_is_not_run_again() -> None:
    cache = IdempotencyCache(max_result_bytes=10)
    cache.finish(run(cache, "k1").token, "x" * 100, 102, 1.0)
    assert cache.bytes == 0
    with pytest.raises(LimitExceeded) as err:
        cache.begin(ALICE, "k1", TOOL, ARGS, 2.0)
    assert err.value.data == {"limit": 10, "size": 102}


def test_an_abandoned_call_runs_again_and_its_joiners_begin_again() -> None:
    cache = IdempotencyCache()
    first = run(cache, "k1")
    cache.begin(ALICE, "k1", TOOL, ARGS, 0.5)
    assert cache.abandon(first.token) == 1
    assert cache.abandon(first.token) == 0
    assert cache.finish(first.token, "late", 4, 1.0) == 0  # already abandoned: not kept
    second = run(cache, "k1", now=1.0)
    assert second.token != first.token
    assert len(cache) == 1


@pytest.mark.parametrize("key", ["", "x" * (MAX_KEY_LENGTH + 1), 5])
def test_malformed_keys_are_refused(key: object) -> None:
    with pytest.raises(InvalidParams):
        IdempotencyCache().begin(ALICE, key, TOOL, ARGS, 0.0)  # type: ignore[arg-type]


def test_running_keyed_calls_are_bounded() -> None:
    cache = IdempotencyCache(max_running=2)
    run(cache, "a")
    run(cache, "b")
    with pytest.raises(LimitExceeded) as err:
        cache.begin(ALICE, "c", TOOL, ARGS, 0.0)
    assert err.value.data == {"limit": 2}


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        IdempotencyCache(ttl=0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 20),  # key
            st.integers(0, 2),  # arguments
            st.sampled_from(["begin", "finish", "abandon"]),
            st.integers(0, 50),  # answer size
            st.floats(0, 5),  # time passing
        ),
        max_size=120,
    )
)
def test_bounded_and_never_runs_a_kept_call_twice(
    script: list[tuple[int, int, str, int, float]],
) -> None:
    cache = IdempotencyCache(ttl=20.0, max_entries=6, max_bytes=100, max_result_bytes=40)
    now = 0.0
    running: dict[str, int] = {}  # key -> token
    kept: dict[str, tuple[int, float]] = {}  # key -> (answer, answered at)
    for key_n, arg_n, what, size, dt in script:
        now += dt
        key = f"k{key_n}"
        args = args_hash({"a": arg_n})
        if what == "begin":
            try:
                outcome = cache.begin(ALICE, key, TOOL, args, now)
            except (InvalidParams, LimitExceeded):
                continue
            if isinstance(outcome, Run):
                assert key not in running
                # Run again only once the first answer is gone (window over, or evicted).
                running[key] = outcome.token
                kept.pop(key, None)
            elif isinstance(outcome, Join):
                assert running[key] == outcome.token
            else:
                assert (outcome.result, outcome.finished_at) == kept[key]
                assert now - outcome.finished_at < 20.0
        elif running:
            key = sorted(running)[key_n % len(running)]
            token = running.pop(key)
            if what == "finish":
                cache.finish(token, size, size, now)
                kept[key] = (size, now)
            else:
                cache.abandon(token)
        assert cache.bytes <= 100
        assert len(cache) - len(running) <= 6
