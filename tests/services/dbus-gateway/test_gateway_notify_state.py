"""Notifications as values: Notify's arguments, others' calls read defensively, events only for
the agent's own ids (even one closed before its id was known), and who may read the history."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from dbus_fast import Variant

from kiki_dbus_gateway.notify import Notifications, may_read, notify_args, observed
from libkiki.peer import PeerCred
from libkiki.principals import Principals

pytestmark = pytest.mark.unit

NOW = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.UTC)


def test_notify_args_follow_the_spec() -> None:
    body = notify_args(
        {
            "summary": "s",
            "urgency": "critical",
            "actions": [{"key": "k", "label": "L"}],
            "replacesId": 4,
            "expireTimeoutMs": 0,
        },
        "Kiki",
    )
    assert body == ["Kiki", 4, "", "s", "", ["k", "L"], {"urgency": Variant("y", 2)}, 0]


def test_another_apps_call_is_read_defensively() -> None:
    good = ["Mail", 0, "", "Hi", "b" * 9000, ["a", "A", "odd"], {"urgency": Variant("y", 0)}, -1]
    record = observed(good, NOW)
    assert record is not None
    assert record["appName"] == "Mail"
    assert len(record["body"]) == 4096
    assert record["actions"] == [{"key": "a", "label": "A"}]
    assert record["urgency"] == "low"
    assert record["at"] == "2026-12-07T12:00:00.000Z"
    assert observed(["too", "short"], NOW) is None
    assert observed([1, 0, "", "Hi", "", [], {}, -1], NOW) is None
    odd = observed(["M", 0, "", "S", "", [1], {"urgency": Variant("s", "x")}, -1], NOW)
    assert odd == {"appName": "M", "summary": "S", "at": "2026-12-07T12:00:00.000Z"}


def test_events_are_told_for_own_ids_only() -> None:
    state = Notifications(10)
    events: list[dict[str, Any]] = []
    state.event_listeners.append(events.append)
    state.sent(7, state.sending())
    state.action_invoked([7, "default"])
    state.action_invoked([8, "default"])  # another app's
    state.closed([7, 2])
    state.closed([7, 2])  # told once
    assert events == [
        {"$type": "dev.kiki.notify.subscribeEvents#actionInvoked", "id": 7, "key": "default"},
        {"$type": "dev.kiki.notify.subscribeEvents#closed", "id": 7, "reason": "dismissed"},
    ]


def test_a_close_before_the_id_was_known_is_told_when_it_is() -> None:
    state = Notifications(10)
    events: list[dict[str, Any]] = []
    state.event_listeners.append(events.append)
    mark = state.sending()
    state.closed([9, 1])
    assert events == []
    state.sent(9, mark)
    assert events == [
        {"$type": "dev.kiki.notify.subscribeEvents#closed", "id": 9, "reason": "expired"}
    ]


def test_an_event_from_before_the_call_is_not_the_agents() -> None:
    state = Notifications(10)
    events: list[dict[str, Any]] = []
    state.event_listeners.append(events.append)
    state.action_invoked([4, "open"])  # another app's notification 4, before the agent's call
    mark = state.sending()
    state.closed([3, 2])  # during the call
    state.sent(4, mark)
    state.sent(3, state.sending())  # another call: the close came before it
    assert events == []


def test_a_replacing_call_is_told_no_earlier_event() -> None:
    # replacesId=4: the server answers 4, and a close of (another app's) 4 that came during
    # the call is about the notification replaced, not the agent's.
    state = Notifications(10)
    events: list[dict[str, Any]] = []
    state.event_listeners.append(events.append)
    state.closed([4, 3])
    state.sent(4, None)
    assert events == []
    state.closed([4, 1])
    assert events == [
        {"$type": "dev.kiki.notify.subscribeEvents#closed", "id": 4, "reason": "expired"}
    ]


def test_the_history_is_bounded_newest_kept() -> None:
    state = Notifications(2)
    for i in range(5):
        state.seen({"summary": str(i)})
    assert [r["summary"] for r in state.recent(10)] == ["3", "4"]
    assert [r["summary"] for r in state.recent(1)] == ["4"]


def test_who_may_read_others_notifications() -> None:
    me = PeerCred(100, 1000, 1000)
    other = PeerCred(101, 1001, 1001)
    none = Principals.parse([])
    assert may_read(me, False, 1000, none)
    assert not may_read(me, True, 1000, none)  # on behalf of someone else
    assert not may_read(other, False, 1000, none)
    assert may_read(other, False, 1000, Principals.parse(["uid:1001"]))
    assert not may_read(None, False, 1000, none)
