"""Reply, Sent and after_input on their own: states, callbacks, misuse."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from libkiki.rpc import Reply, Sent, after_input
from libkiki.rpc.later import input_ends, input_starts, reading_input

pytestmark = pytest.mark.unit


def test_a_reply_settles_once_and_tells_its_connection_at_once() -> None:
    told: list[tuple[bool, Any]] = []
    reply = Reply()
    reply.bind(lambda r: told.append(r.outcome()))
    assert not reply.done()
    reply.set_result({"x": 1})
    assert told == [(True, {"x": 1})]  # in the call that settled it, not a turn later
    assert reply.done()
    assert not reply.cancelled()
    with pytest.raises(asyncio.InvalidStateError):
        reply.set_result(2)
    with pytest.raises(asyncio.InvalidStateError):
        reply.set_exception(RuntimeError("late"))
    assert not reply.cancel()  # answered: nothing to cancel


def test_a_reply_settled_before_it_is_bound_is_told_when_bound() -> None:
    reply = Reply()
    error = RuntimeError("no")
    reply.set_exception(error)
    told: list[tuple[bool, Any]] = []
    reply.bind(lambda r: told.append(r.outcome()))
    assert told == [(False, error)]
    with pytest.raises(RuntimeError, match="one request"):
        reply.bind(lambda r: None)


def test_cancelling_a_reply_runs_its_cancel_callbacks_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reply = Reply()
    told: list[bool] = []
    calls: list[str] = []
    reply.bind(lambda r: told.append(r.cancelled()))

    def broken() -> None:
        calls.append("broken")
        raise RuntimeError("cancel callback bug")

    reply.on_cancel(lambda: calls.append("first"))
    reply.on_cancel(broken)
    reply.on_cancel(lambda: calls.append("last"))  # still runs after the one that raised
    with caplog.at_level(logging.ERROR):
        assert reply.cancel()
    assert calls == ["first", "broken", "last"]
    assert "cancel callback bug" in caplog.text
    assert told == [True]
    assert reply.cancelled()
    assert not reply.cancel()
    reply.on_cancel(lambda: calls.append("too late"))  # done: never called
    assert calls == ["first", "broken", "last"]
    with pytest.raises(asyncio.InvalidStateError):
        reply.outcome()


def test_an_answered_reply_never_runs_its_cancel_callbacks() -> None:
    reply = Reply()
    calls: list[str] = []
    reply.on_cancel(lambda: calls.append("cancelled"))
    reply.set_result(None)
    assert not reply.cancel()
    assert calls == []


def test_a_pending_reply_has_no_outcome() -> None:
    with pytest.raises(asyncio.InvalidStateError):
        Reply().outcome()


async def test_waiters_are_done_when_the_reply_or_the_request_is() -> None:
    loop = asyncio.get_running_loop()
    reply = Reply()
    waiter = reply.waiter(loop)
    assert reply.waiter(loop) is waiter
    assert not waiter.done()
    reply.set_result(1)
    assert waiter.done()
    assert Reply().waiter(loop) is not waiter
    finished = Reply()
    finished.cancel()
    assert finished.waiter(loop).done()

    ends: list[tuple[Any, BaseException | None]] = []
    sent = Sent(lambda result, error: ends.append((result, error)), lambda s: None)
    sent_waiter = sent.waiter(loop)
    sent.finish(5, None)
    assert sent_waiter.done()
    assert ends == [(5, None)]


def test_a_sent_request_ends_once(caplog: pytest.LogCaptureFixture) -> None:
    ends: list[tuple[Any, BaseException | None]] = []
    cancels: list[Sent] = []

    def done(result: Any, error: BaseException | None) -> None:
        ends.append((result, error))
        raise RuntimeError("done callback bug")

    sent = Sent(done, cancels.append)
    with caplog.at_level(logging.ERROR):
        sent.finish(None, asyncio.CancelledError())
    assert "done callback bug" in caplog.text  # logged, not raised into the connection
    sent.finish("again", None)  # ignored: it has ended
    assert len(ends) == 1
    assert isinstance(ends[0][1], asyncio.CancelledError)
    assert sent.done()
    assert not sent.cancel()  # ended: the connection is not asked
    assert cancels == []


def test_cancelling_a_sent_request_asks_its_connection() -> None:
    cancels: list[Sent] = []
    sent = Sent(lambda result, error: None, cancels.append)
    assert sent.cancel()
    assert cancels == [sent]


def test_after_input_runs_at_once_when_no_input_is_being_handled() -> None:
    calls: list[str] = []
    after_input(lambda: calls.append("now"))
    assert calls == ["now"]


def test_after_input_waits_for_the_end_of_the_input_and_keeps_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []

    def broken() -> None:
        raise RuntimeError("after-input bug")

    input_starts()
    try:
        after_input(lambda: calls.append("first"))
        after_input(broken)
        # Scheduled by a callback: there is no input being handled any more, so at once.
        after_input(lambda: after_input(lambda: calls.append("nested")))
        after_input(lambda: calls.append("last"))
        assert calls == []
    finally:
        with caplog.at_level(logging.ERROR):
            input_ends()
    assert calls == ["first", "nested", "last"]
    assert "after-input bug" in caplog.text
    after_input(lambda: calls.append("later"))
    assert calls[-1] == "later"


def test_reading_input_tells_whether_after_input_would_wait() -> None:
    ran: list[str] = []
    assert not reading_input()
    input_starts()
    try:
        assert reading_input()
        after_input(lambda: ran.append("after"))
        assert ran == []
    finally:
        input_ends()
    assert ran == ["after"]
    assert not reading_input()
