"""The audit log's hash chain detects edits, deletions, reordering and a cut tail."""

from __future__ import annotations

import hashlib
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from kiki_tool_broker.audit import AuditLog
from libkiki.audit import args_hash, format_head, read_entries, verify

pytestmark = pytest.mark.unit

CALLER = {"uid": 1000, "gid": 1000, "pid": 42}


def fill(directory: Path, n: int = 5) -> AuditLog:
    log = AuditLog(directory)
    for i in range(n):
        log.append(
            caller=CALLER,
            tool=f"dev.kiki.test.t{i}",
            outcome="ok",
            code=None,
            duration_us=1500,
            arguments={"i": i, "secret": "hunter2"},
        )
    return log


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def test_intact_log_verifies_and_never_holds_arguments(tmp_path: Path) -> None:
    log = fill(tmp_path)
    log.close()
    assert list(verify(log.path, log.head_path)) == []
    assert b"hunter2" not in log.path.read_bytes()
    entries = read_entries(log.path)
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0]["argsHash"] == args_hash({"secret": "hunter2", "i": 0})


def test_a_snapshot_verifies_while_appends_go_on(tmp_path: Path) -> None:
    # The broker checks the chain in a thread as of the call, while it goes on appending.
    log = fill(tmp_path, 3)
    end, head = log.snapshot()
    log.append(
        caller=CALLER,
        tool="dev.kiki.test.late",
        outcome="ok",
        code=None,
        duration_us=1,
        arguments={},
    )
    assert list(verify(log.path, end=end, head=head)) == []
    assert list(verify(log.path, log.head_path)) == []
    # The snapshot's head must match the log's first ``end`` bytes: a cut is still caught.
    problems = [str(p) for p in verify(log.path, end=end - 10, head=head)]
    assert problems[0] == "line 3: not a JSON audit entry"


def test_an_overlong_line_is_a_problem_and_is_stepped_over(tmp_path: Path) -> None:
    log = fill(tmp_path, 2)
    raw = lines(log.path)
    log.path.write_bytes(raw[0] + b"\n" + b"x" * (3 << 20) + b"\n" + raw[1] + b"\n")
    problems = [str(p) for p in verify(log.path)]
    assert problems[0] == "line 2: longer than 1048576 bytes: not an audit entry"
    # and line 3 no longer follows what came before it
    assert [p.split(":")[0] for p in problems[1:]] == ["line 3", "line 3"]


def test_edited_line_is_detected(tmp_path: Path) -> None:
    log = fill(tmp_path)
    raw = lines(log.path)
    entry = orjson.loads(raw[2])
    entry["outcome"] = "error"
    raw[2] = orjson.dumps(entry)
    log.path.write_bytes(b"\n".join(raw) + b"\n")
    problems = [str(p) for p in verify(log.path, log.head_path)]
    assert problems == ["line 3: hash mismatch: the entry was edited"]


def test_deleted_line_is_detected(tmp_path: Path) -> None:
    log = fill(tmp_path)
    raw = lines(log.path)
    del raw[1]
    log.path.write_bytes(b"\n".join(raw) + b"\n")
    problems = [str(p) for p in verify(log.path, log.head_path)]
    assert any("line 2: sequence 3 follows 1" in p for p in problems)
    assert any("does not chain" in p for p in problems)


def test_cut_tail_is_detected_against_the_head(tmp_path: Path) -> None:
    log = fill(tmp_path)
    raw = lines(log.path)
    log.path.write_bytes(b"\n".join(raw[:3]) + b"\n")
    problems = [str(p) for p in verify(log.path, log.head_path)]
    assert len(problems) == 1
    assert "records seq 5" in problems[0]


def test_reopen_continues_the_chain_and_drops_a_torn_append(tmp_path: Path) -> None:
    fill(tmp_path, 3).close()
    with (tmp_path / "audit.jsonl").open("ab") as f:
        f.write(b'{"seq": 4, "ti')  # the process died inside a write
    log = fill(tmp_path, 2)
    log.close()
    assert [e["seq"] for e in read_entries(log.path)] == [1, 2, 3, 4, 5]
    assert list(verify(log.path, log.head_path)) == []


def test_garbage_line_is_reported(tmp_path: Path) -> None:
    log = fill(tmp_path, 2)
    with log.path.open("ab") as f:
        f.write(b"not json\n")
    problems = [str(p) for p in verify(log.path)]
    assert problems == ["line 3: not a JSON audit entry"]


def test_a_line_is_the_hashed_canonical_form_with_its_hash_and_a_utc_time(tmp_path: Path) -> None:
    before = datetime.now(UTC)
    log = fill(tmp_path, 3)
    log.append(
        caller=CALLER, tool="dev.kiki.t", outcome="ok", code=None, duration_us=1, arguments={}
    )
    after = datetime.now(UTC)
    for raw, entry in zip(lines(log.path), read_entries(log.path), strict=True):
        digest = entry.pop("hash")
        canonical = orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)
        assert raw == canonical[:-1] + b',"hash":"' + digest.encode() + b'"}'
        assert hashlib.sha256(entry["prev"].encode() + canonical).hexdigest() == digest
        # The time is written as datetime.isoformat(timespec="microseconds") writes it.
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", entry["time"])
        when = datetime.fromisoformat(entry["time"])
        assert when.isoformat(timespec="microseconds") == entry["time"]
        assert before - timedelta(seconds=1) <= when <= after
    assert entry["argsHash"] == args_hash({}) == "sha256:" + hashlib.sha256(b"{}").hexdigest()


def chain_after_restart(directory: Path) -> list[str]:
    """Open the log again (a broker restart), append one entry, and verify."""
    log = fill(directory, 1)
    log.close()
    return [str(p) for p in verify(log.path, log.head_path)]


def test_a_tail_cut_while_stopped_stays_visible_after_a_restart(tmp_path: Path) -> None:
    fill(tmp_path).close()
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"\n".join(lines(path)[:3]) + b"\n")
    # Continuing from the log's last line would hide the cut under a fresh head.
    problems = chain_after_restart(tmp_path)
    assert any("line 4: sequence 6 follows 3" in p for p in problems)
    assert any("line 4: does not chain" in p for p in problems)


def test_a_rewritten_last_line_stays_visible_after_a_restart(tmp_path: Path) -> None:
    fill(tmp_path).close()
    path = tmp_path / "audit.jsonl"
    raw = lines(path)
    entry = orjson.loads(raw[-1])
    del entry["hash"]
    entry["outcome"] = "denied"  # rehashed, so the line itself checks out
    canonical = orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)
    digest = hashlib.sha256(entry["prev"].encode() + canonical).hexdigest()
    raw[-1] = canonical[:-1] + b',"hash":"' + digest.encode() + b'"}'
    path.write_bytes(b"\n".join(raw) + b"\n")
    assert chain_after_restart(tmp_path) == [
        "line 6: does not chain to the line before it (a line was removed or changed)"
    ]


def test_a_head_one_line_behind_is_a_stop_between_the_two_writes(tmp_path: Path) -> None:
    fill(tmp_path, 3).close()
    second = read_entries(tmp_path / "audit.jsonl")[1]
    (tmp_path / "audit.head").write_bytes(format_head(2, second["hash"]))
    assert chain_after_restart(tmp_path) == []
    assert [e["seq"] for e in read_entries(tmp_path / "audit.jsonl")] == [1, 2, 3, 4]


def test_an_unreadable_head_is_rewritten_from_the_log(tmp_path: Path) -> None:
    fill(tmp_path, 3).close()
    (tmp_path / "audit.head").write_bytes(b"garbage\n")
    assert chain_after_restart(tmp_path) == []


def test_a_head_that_cannot_be_written_leaves_the_line_recorded(tmp_path: Path) -> None:
    """The head's write fails after its line was written (a full copy-on-write disk: here the
    head is /dev/full): the append still succeeds, and the next one rewrites the head."""
    log = fill(tmp_path, 2)
    head_fd = log._head_fd
    log._head_fd = os.open("/dev/full", os.O_WRONLY)
    entry = log.append(
        caller=CALLER, tool="dev.kiki.test.t", outcome="ok", code=None, duration_us=1, arguments={}
    )
    assert entry["seq"] == 3 == log.seq
    os.close(log._head_fd)
    log._head_fd = head_fd  # room again
    after = log.append(
        caller=CALLER, tool="dev.kiki.test.u", outcome="ok", code=None, duration_us=1, arguments={}
    )
    assert after["prev"] == entry["hash"]
    log.close()
    assert [e["seq"] for e in read_entries(log.path)] == [1, 2, 3, 4]
    assert list(verify(log.path, log.head_path)) == []
