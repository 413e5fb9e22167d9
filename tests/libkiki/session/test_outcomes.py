"""What a remote client makes of results, close frames and the values pycrdt reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from libkiki.errors import (
    FrameTooLarge,
    InvalidFrame,
    InvalidParams,
    KikiError,
    LimitExceeded,
    NotFound,
    PeerGone,
    PermissionDenied,
    ProtocolError,
    Timeout,
    ToolError,
    ValidationError,
)
from libkiki.session.outcomes import error_for_close, is_final, new_intent, outcome, plain

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 7, 18, 0, 0, 123456, tzinfo=UTC)


def test_an_ok_result_is_its_output_as_json_carries_it() -> None:
    assert outcome({"status": "ok", "output": {"n": 3.0, "x": 0.5, "l": [1.0]}}) == {
        "n": 3,
        "x": 0.5,
        "l": [1],
    }
    assert outcome({"status": "ok"}) is None


@pytest.mark.parametrize(
    ("result", "cls", "message"),
    [
        (
            {"status": "refused", "error": {"name": "PermissionDenied", "message": "no"}},
            PermissionDenied,
            "no",
        ),
        (
            {"status": "refused", "error": {"name": "LimitExceeded", "message": "slow down"}},
            LimitExceeded,
            "slow down",
        ),
        (
            {"status": "refused", "error": {"name": "NotFound", "message": "no such tool"}},
            NotFound,
            "no such tool",
        ),
        ({"status": "refused"}, PermissionDenied, "the intent was refused"),
        ({"status": "expired"}, Timeout, "the intent was expired"),
        ({"status": "error", "error": {"name": "ToolError", "message": "boom"}}, ToolError, "boom"),
        # A class whose own __init__ takes structured arguments still comes back as itself.
        (
            {"status": "error", "error": {"name": "ValidationError", "message": "input.x: bad"}},
            ValidationError,
            "input.x: bad",
        ),
        # A name Kiki does not know keeps its words, under the status's own class.
        (
            {"status": "error", "error": {"name": "Weird", "message": "odd"}},
            ToolError,
            "Weird: odd",
        ),
        (
            {"status": "error", "error": {"name": "os", "message": "not a class"}},
            ToolError,
            "os: not a class",
        ),
        ({"status": "bogus"}, KikiError, "the intent was bogus"),
    ],
)
def test_a_failed_result_raises_the_class_it_names(
    result: dict[str, object], cls: type[KikiError], message: str
) -> None:
    with pytest.raises(cls) as raised:
        outcome(result)
    assert type(raised.value) is cls
    assert str(raised.value) == message
    assert raised.value.remote


def test_only_the_four_final_statuses_are_final() -> None:
    assert [is_final({"status": s}) for s in ("ok", "error", "refused", "expired")] == [True] * 4
    assert not is_final({"status": "running"})
    assert not is_final(None)
    assert not is_final("ok")


@pytest.mark.parametrize(
    ("code", "reason", "cls", "message"),
    [
        (1008, "PermissionDenied: token expired", PermissionDenied, "token expired"),
        (1013, "LimitExceeded: too many clients", LimitExceeded, "too many clients"),
        (1013, "Unavailable: the store failed", KikiError, "the store failed"),
        (1007, "InvalidFrame: garbage", InvalidFrame, "garbage"),
        (1002, "ProtocolError: text frame", ProtocolError, "text frame"),
        (1009, "", FrameTooLarge, "the session closed the connection (code 1009)"),
        (1008, "", PermissionDenied, "the session closed the connection (code 1008)"),
        (1001, "going away", PeerGone, "going away"),
        (None, "", PeerGone, "the connection to the session was lost"),
        (1006, "", PeerGone, "the connection to the session was lost"),
        (4000, "Nonsense: words", KikiError, "Nonsense: words"),
    ],
)
def test_a_close_frame_becomes_the_error_its_reason_names(
    code: int | None, reason: str, cls: type[KikiError], message: str
) -> None:
    error = error_for_close(code, reason)
    assert isinstance(error, cls)
    assert str(error) == message


def test_an_unavailable_close_is_unavailable() -> None:
    from libkiki.errors import Unavailable

    assert type(error_for_close(1013, "Unavailable: the store failed")) is Unavailable


def test_an_intent_is_the_contracts_object() -> None:
    intent = new_intent(
        "a" * 32,
        "dev.kiki.demo.echo",
        {"n": 1},
        by="alice",
        now=NOW,
        deadline=NOW.astimezone(timezone(timedelta(hours=2))) + timedelta(seconds=5),
    )
    assert intent == {
        "id": "a" * 32,
        "tool": "dev.kiki.demo.echo",
        "input": {"n": 1},
        "by": "alice",
        "createdAt": "2026-12-07T18:00:00.123Z",
        "deadline": "2026-12-07T18:00:05.123Z",
    }
    assert "deadline" not in new_intent("x", "t.t.t", {}, by="b", now=NOW)


@pytest.mark.parametrize(
    ("intent_id", "tool", "input", "said"),
    [
        ("", "a.b.c", {}, "intent id"),
        ("x" * 65, "a.b.c", {}, "intent id"),
        ("no spaces", "a.b.c", {}, "intent id"),
        ("ok", "", {}, "NSID"),
        ("ok", "a.b.c", {"x": object()}, "not JSON"),
        ("ok", "a.b.c", {"x": float("nan")}, None),  # orjson writes NaN as null: JSON after all
    ],
)
def test_an_intent_no_device_could_carry_out_is_refused_here(
    intent_id: str, tool: str, input: object, said: str | None
) -> None:
    if said is None:
        assert new_intent(intent_id, tool, input, by="b", now=NOW)["input"] == {"x": None}
        return
    with pytest.raises(InvalidParams, match=said):
        new_intent(intent_id, tool, input, by="b", now=NOW)


def test_an_input_over_the_bound_is_refused_before_it_is_sent() -> None:
    with pytest.raises(FrameTooLarge, match="exceeds the limit of 100 bytes"):
        new_intent("x", "a.b.c", {"t": "x" * 100}, by="b", now=NOW, max_input=100)
    assert new_intent("x", "a.b.c", {"t": "x" * 80}, by="b", now=NOW, max_input=100)


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(InvalidParams, match="time zone"):
        new_intent("x", "a.b.c", {}, by="b", now=datetime(2026, 1, 1))


def test_plain_keeps_what_a_double_cannot_hold_exactly() -> None:
    assert plain(2.0**53) == 2**53
    assert plain(2.0**60) == 2.0**60
    assert plain(float("inf")) == float("inf")
    assert plain(1.5) == 1.5
    assert plain(True) is True
    assert plain(("a", 2.0)) == ["a", 2]


def test_an_intent_names_who_asks_as_the_lexicon_requires() -> None:
    # Both ends refuse an intent without `by`: the lexicon says so to whoever writes one.
    from libkiki.errors import KikiError
    from libkiki.lexicon import Registry

    registry, problems = Registry.from_search_path()
    assert not problems
    check = registry.validator("dev.kiki.session.defs#intent")
    made = new_intent("i1", "dev.kiki.demo.echo", {}, by="alice", now=datetime.now(UTC))
    check.validate(made)
    del made["by"]
    with pytest.raises(KikiError, match="by"):
        check.validate(made)


def test_plain_refuses_a_value_nested_past_its_depth() -> None:
    from libkiki.errors import LimitExceeded
    from libkiki.session.outcomes import MAX_DEPTH

    def nested(levels: int) -> object:
        value: object = 1.0
        for n in range(levels):
            value = [value] if n % 2 else {"k": value}
        return value

    assert plain(nested(MAX_DEPTH)) is not None
    with pytest.raises(LimitExceeded, match=f"deeper than {MAX_DEPTH}"):
        plain(nested(MAX_DEPTH + 1))
    # Deep enough to exhaust Python's stack were it followed.
    with pytest.raises(LimitExceeded):
        plain(nested(5000))
