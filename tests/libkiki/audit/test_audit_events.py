"""Subscription lines in the audit log: a log written before them reads and verifies the same,
and a log with both kinds of line chains as one."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kiki_tool_broker.audit import AuditLog
from kikitest import REPO
from libkiki.audit import (
    EVENT_CALL,
    EVENT_SUBSCRIBE,
    EVENT_UNSUBSCRIBE,
    args_hash,
    event_of,
    read_entries,
    verify,
)

pytestmark = pytest.mark.unit

REFERENCE = REPO / "tests" / "kikitest" / "data" / "audit-v1"
CALLER = {"uid": 1000, "gid": 1000, "pid": 42}
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_lines_written_before_streams_are_calls() -> None:
    entries = read_entries(REFERENCE / "audit.jsonl")
    assert entries
    assert {event_of(e) for e in entries} == {EVENT_CALL}
    assert all("event" not in e for e in entries)


def test_subscription_lines_continue_an_old_log_and_verify(tmp_path: Path) -> None:
    shutil.copy(REFERENCE / "audit.jsonl", tmp_path / "audit.jsonl")
    shutil.copy(REFERENCE / "audit.head", tmp_path / "audit.head")
    log = AuditLog(tmp_path)
    params = {"room": "a"}
    common: dict[str, Any] = {
        "caller": CALLER,
        "tool": "org.example.ticks",
        "outcome": "ok",
        "code": None,
    }
    opened = log.append(**common, duration_us=0, arguments=params, now=NOW, event=EVENT_SUBSCRIBE)
    call = log.append(**common, duration_us=5, arguments={}, now=NOW, event=EVENT_CALL)
    ended = log.append(
        **common,
        duration_us=0,
        arguments=params,
        now=NOW,
        event=EVENT_UNSUBSCRIBE,
        reason="unsubscribed",
    )
    log.close()
    assert (opened["event"], opened["argsHash"]) == (EVENT_SUBSCRIBE, args_hash(params))
    assert "event" not in call  # a call's line is as it always was
    assert (ended["event"], ended["reason"]) == (EVENT_UNSUBSCRIBE, "unsubscribed")
    assert list(verify(log.path, log.head_path)) == []
    assert [event_of(e) for e in read_entries(log.path)[-3:]] == [
        EVENT_SUBSCRIBE,
        EVENT_CALL,
        EVENT_UNSUBSCRIBE,
    ]
    # The chain covers the new keys: changing one is caught.
    text = log.path.read_text().replace('"reason":"unsubscribed"', '"reason":"closed"')
    log.path.write_text(text)
    assert list(verify(log.path, log.head_path))
