"""The audit log's format did not change when it moved to libkiki.

``tests/kikitest/data/audit-v1`` holds a log and its head written by the broker's own ``audit.py``
before the format, reader and verifier moved to :mod:`libkiki.audit` (its commit says so), with
the calls that wrote them. Logs on devices were written that way: they must still verify, page
and continue, and what the broker writes now must be the same bytes.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from kiki_tool_broker.audit import AuditLog
from kikitest import REPO, kiki
from libkiki.audit import AuditReader, parse_head, read_entries, verify

pytestmark = pytest.mark.integration

REFERENCE = REPO / "tests" / "kikitest" / "data" / "audit-v1"


def calls() -> list[dict[str, Any]]:
    out = []
    for call in json.loads((REFERENCE / "calls.json").read_text()):
        call["now"] = datetime.fromisoformat(call["now"])
        call.setdefault("provider", None)
        out.append(call)
    return out


def reference_copy(tmp_path: Path) -> Path:
    shutil.copy(REFERENCE / "audit.jsonl", tmp_path / "audit.jsonl")
    shutil.copy(REFERENCE / "audit.head", tmp_path / "audit.head")
    return tmp_path


def test_a_log_written_before_the_move_verifies() -> None:
    assert list(verify(REFERENCE / "audit.jsonl", REFERENCE / "audit.head")) == []
    end = (REFERENCE / "audit.jsonl").stat().st_size
    head = parse_head((REFERENCE / "audit.head").read_bytes())
    assert head is not None
    assert head[0] == len(calls())
    assert list(verify(REFERENCE / "audit.jsonl", end=end, head=head)) == []


def test_the_broker_writes_the_same_bytes_as_before(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    for call in calls():
        log.append(**call)
    log.close()
    assert log.path.read_bytes() == (REFERENCE / "audit.jsonl").read_bytes()
    assert log.head_path.read_bytes() == (REFERENCE / "audit.head").read_bytes()


def test_a_log_written_before_the_move_pages_as_it_reads() -> None:
    lines = (REFERENCE / "audit.jsonl").read_bytes().splitlines()
    whole = [orjson.loads(line) for line in lines]
    assert read_entries(REFERENCE / "audit.jsonl") == whole
    assert read_entries(REFERENCE / "audit.jsonl", last=2) == whole[-2:]
    with AuditReader(REFERENCE / "audit.jsonl") as reader:
        newest = reader.before(None, 2)
        assert newest.entries == whole[-2:]
        assert (newest.oldest, newest.newest, newest.at_start) == (5, 6, False)
        after = reader.after(2, 100, "org.example.player.seek")
        assert after.entries == [whole[2]]
        assert reader.last_line() == lines[-1]


def test_the_broker_continues_a_log_written_before_the_move(tmp_path: Path) -> None:
    log = AuditLog(reference_copy(tmp_path))
    *_, last = calls()
    entry = log.append(**last)
    log.close()
    old_head = parse_head((REFERENCE / "audit.head").read_bytes())
    assert old_head is not None
    assert (entry["seq"], entry["prev"]) == (old_head[0] + 1, old_head[1])
    assert list(verify(log.path, log.head_path)) == []


def test_kiki_tools_log_file_verifies_a_log_written_before_the_move(tmp_path: Path) -> None:
    directory = reference_copy(tmp_path)
    done = kiki("tools", "log", "--file", str(directory / "audit.jsonl"), "--verify", "--json")
    assert done.returncode == 0, done.stderr
    assert "chain intact" in done.stderr
    # Split on newlines only: an entry may hold U+2028, which splitlines() would cut at.
    shown = [orjson.loads(line) for line in done.stdout.rstrip("\n").split("\n")]
    assert [e["seq"] for e in shown] == [1, 2, 3, 4, 5, 6]
    # An edit of one character is caught: the check above could fail.
    (directory / "audit.jsonl").write_bytes(
        (directory / "audit.jsonl").read_bytes().replace(b'"durationUs":120', b'"durationUs":121')
    )
    edited = kiki("tools", "log", "--file", str(directory / "audit.jsonl"), "--verify")
    assert edited.returncode == 1
    assert "line 1: hash mismatch" in edited.stderr
