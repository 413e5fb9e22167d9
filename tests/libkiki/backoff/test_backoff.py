"""The restart back-off of `kiki up`, driven with made-up timestamps."""

from __future__ import annotations

import pytest

from libkiki.backoff import RestartBackoff

pytestmark = pytest.mark.unit


def crash(backoff: RestartBackoff, at: float, *, ready_for: float | None) -> float:
    """One run: started, ready at ``at`` (unless ``ready_for`` is None), ended ``ready_for``
    seconds later; returns the wait before the next start."""
    backoff.started()
    if ready_for is None:
        return backoff.exited(at)
    backoff.ready(at)
    return backoff.exited(at + ready_for)


def test_the_wait_doubles_while_the_service_keeps_failing_up_to_the_maximum() -> None:
    backoff = RestartBackoff(initial=0.5, maximum=30.0, stable_after=10.0)
    waits = [crash(backoff, 10.0 * i, ready_for=3.0) for i in range(9)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_a_run_never_ready_counts_as_a_failure_however_long_it_lasted() -> None:
    backoff = RestartBackoff(initial=0.5, maximum=30.0, stable_after=10.0)
    backoff.started()
    assert backoff.exited(1000.0) == 0.5
    backoff.started()
    assert backoff.exited(5000.0) == 1.0


def test_a_service_healthy_for_stable_after_restarts_at_once_after_its_next_crash() -> None:
    # The case: six kills 4 s apart grew the wait to 16 s; the broker then ran healthy.
    backoff = RestartBackoff(initial=0.5, maximum=30.0, stable_after=10.0)
    waits = [crash(backoff, 4.0 * i, ready_for=3.5) for i in range(6)]
    assert waits[-1] == 16.0
    assert crash(backoff, 100.0, ready_for=10.0) == 0.5
    # and the count starts again from there
    assert crash(backoff, 200.0, ready_for=1.0) == 1.0


def test_healthy_means_ready_for_stable_after_not_merely_alive() -> None:
    backoff = RestartBackoff(initial=0.5, maximum=30.0, stable_after=10.0)
    for i in range(4):
        crash(backoff, 10.0 * i, ready_for=1.0)
    assert backoff.next_delay == 8.0
    # Alive for 60 s but ready only for the last 9.9 of them: not healthy long enough.
    backoff.started()
    backoff.ready(150.1)
    assert backoff.exited(160.0) == 8.0
    # A second READY=1 (after a reload, say) does not restart the healthy period.
    backoff.started()
    backoff.ready(200.0)
    backoff.ready(209.0)
    assert backoff.exited(210.0) == 0.5


def test_a_start_forgets_the_previous_runs_readiness() -> None:
    backoff = RestartBackoff(initial=1.0, maximum=8.0, stable_after=10.0)
    backoff.started()
    backoff.ready(0.0)
    assert backoff.exited(1.0) == 1.0
    backoff.started()  # this run never reports ready
    assert backoff.exited(100.0) == 2.0


@pytest.mark.parametrize(
    ("initial", "maximum", "stable_after"), [(0.0, 1.0, 1.0), (2.0, 1.0, 1.0), (1.0, 2.0, -1.0)]
)
def test_nonsense_settings_are_refused(initial: float, maximum: float, stable_after: float) -> None:
    with pytest.raises(ValueError, match=r"initial|stable_after"):
        RestartBackoff(initial=initial, maximum=maximum, stable_after=stable_after)
