"""ReadAuditLog reads a page of the audit log, not the whole log, however long it is."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from kiki_tool_broker.audit import AuditLog
from kiki_tool_broker.registry import ToolRegistry
from kiki_tool_broker.tools import BuiltinTools
from libkiki.audit import read_entries, verify
from libkiki.errors import InvalidParams, KikiError

pytestmark = pytest.mark.unit

CALLER = {"uid": 1000, "gid": 1000, "pid": 42}
BIG = 200_000


def fill(log: AuditLog, n: int, tools: int = 1) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(n):
        log.append(
            caller=CALLER,
            tool=f"dev.kiki.test.t{i % tools}",
            outcome="ok",
            code=None,
            duration_us=5,
            arguments={},
            now=now,
        )


def tools_for(log: AuditLog) -> BuiltinTools:
    return BuiltinTools(ToolRegistry(), log, dict, max_line=1 << 20)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuditLog]:
    log = AuditLog(tmp_path_factory.mktemp("big"))
    fill(log, BIG)
    yield log
    log.close()


class Reads:
    """Counts the bytes read from the audit log, by either way of reading it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bytes = 0
        pread, read_bytes = os.pread, Path.read_bytes

        def counted_pread(fd: int, n: int, offset: int) -> bytes:
            data = pread(fd, n, offset)
            self.bytes += len(data)
            return data

        def counted_read_bytes(path: Path) -> bytes:
            data = read_bytes(path)
            self.bytes += len(data)
            return data

        monkeypatch.setattr(os, "pread", counted_pread)
        monkeypatch.setattr(Path, "read_bytes", counted_read_bytes)


def read(log: AuditLog, **args: Any) -> dict[str, Any]:
    result = tools_for(log).read_audit_log(args)
    assert isinstance(result, dict)
    return result


def seqs(result: dict[str, Any]) -> list[int]:
    return [e["seq"] for e in result["entries"]]


def test_the_newest_page_of_a_large_log_reads_only_its_end(
    big: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = Reads(monkeypatch)
    result = read(big, latest=True, limit=3)
    assert seqs(result) == [BIG - 2, BIG - 1, BIG]
    assert result["cursor"] == BIG  # follow the log from here
    assert result["before"] == BIG - 2  # or page back from here
    older = read(big, before=result["before"], limit=2)
    assert seqs(older) == [BIG - 4, BIG - 3]
    assert older["before"] == BIG - 4
    assert reads.bytes < 1 << 20, f"read {reads.bytes} bytes of a {BIG}-line log for 5 entries"
    # The lines are the log's own, hash chain and all.
    assert result["entries"] == read_entries(big.path)[-3:]


def test_a_page_after_a_cursor_deep_in_a_large_log_reads_only_around_it(
    big: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = Reads(monkeypatch)
    for cursor in (BIG - 10, BIG // 2, 1):
        result = read(big, cursor=cursor, limit=5)
        assert seqs(result) == list(range(cursor + 1, cursor + 6))
        assert result["cursor"] == cursor + 5
        assert "before" not in result
    assert "cursor" not in read(big, cursor=BIG)  # the end: nothing after it
    assert reads.bytes < 1 << 20, f"read {reads.bytes} bytes of a {BIG}-line log for 15 entries"


def test_a_full_page_is_bounded_in_entries_and_bytes(big: AuditLog) -> None:
    result = read(big, cursor=1000, limit=1000)
    got = seqs(result)
    assert got == list(range(1001, 1001 + len(got)))
    assert result["cursor"] == got[-1]
    # 1000 of these entries are more than a page's 320 KiB: the page ends at its byte bound,
    # within one entry of it, and its answer fits in a 1 MiB line with the text copy.
    size = sum(len(orjson.dumps(e)) for e in result["entries"])
    assert 320 * 1024 - 1000 < size <= 320 * 1024 + 1000
    assert 3 * size + 4096 < 1 << 20
    assert result["more"] is True  # stopped at its limit: ask again at once
    following = read(big, cursor=result["cursor"], limit=1000)
    assert seqs(following)[0] == got[-1] + 1
    # At the end of the log there is no more, also when the last page is exactly full.
    assert "more" not in read(big, cursor=BIG - 5, limit=1000)
    assert "more" not in read(big, cursor=BIG - 5, limit=5)
    assert read(big, cursor=BIG - 5, limit=4)["more"] is True


@pytest.mark.parametrize("limit", [1, 3, 7, 1000])
def test_paging_backwards_and_forwards_gives_every_entry_once_in_order(
    tmp_path: Path, limit: int
) -> None:
    log = AuditLog(tmp_path)
    fill(log, 50, tools=3)
    every = read_entries(log.path)
    assert [e["seq"] for e in every] == list(range(1, 51))

    backwards: list[dict[str, Any]] = []
    page = read(log, latest=True, limit=limit)
    while True:
        backwards[:0] = page["entries"]
        if "before" not in page:
            break
        page = read(log, before=page["before"], limit=limit)
    assert backwards == every

    forwards: list[dict[str, Any]] = []
    page = read(log, limit=limit)
    while "cursor" in page:
        forwards += page["entries"]
        page = read(log, cursor=page["cursor"], limit=limit)
    assert forwards == every

    one_tool = read(log, latest=True, limit=1000, tool="dev.kiki.test.t1")
    assert one_tool["entries"] == [e for e in every if e["tool"] == "dev.kiki.test.t1"]


def test_unreadable_and_overlong_lines_are_stepped_over(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    fill(log, 10)
    with open(log.path, "ab") as f:
        f.write(b"not json\n" + b"x" * (200 * 1024) + b"\n")
    fill(log, 10)
    every = read_entries(log.path)
    assert len(every) == 20
    assert seqs(read(log, cursor=8, limit=4)) == [9, 10, 11, 12]
    assert seqs(read(log, before=13, limit=4)) == [9, 10, 11, 12]
    backwards: list[dict[str, Any]] = []
    page = read(log, latest=True, limit=3)
    while True:
        backwards[:0] = page["entries"]
        if "before" not in page:
            break
        page = read(log, before=page["before"], limit=3)
    assert backwards == every


def test_a_line_longer_than_any_the_broker_writes_is_an_error_not_an_endless_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog(tmp_path)
    fill(log, 10)
    with open(log.path, "ab") as f:
        f.write(b"x" * (8 << 20) + b"\n")
    fill(log, 10)
    reads = Reads(monkeypatch)
    with pytest.raises(KikiError, match="longer than"):
        read(log, cursor=10, limit=5)
    with pytest.raises(KikiError, match="longer than"):
        read(log, before=11, limit=5)
    assert reads.bytes < 8 << 20
    assert seqs(read(log, latest=True, limit=3)) == [18, 19, 20]


def test_a_cursor_past_the_end_is_rejected(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    fill(log, 5)
    for args in ({"cursor": 6}, {"cursor": 10**12}, {"before": 7}):
        with pytest.raises(InvalidParams, match="past the end of the audit log") as caught:
            read(log, **args)
        assert caught.value.data["error"] == "InvalidCursor"
        assert caught.value.data["last"] == 5
    with pytest.raises(InvalidParams, match="cannot go with before or latest"):
        read(log, cursor=1, latest=True)
    assert seqs(read(log, cursor=5)) == []  # the end itself is a cursor the log gave out
    assert seqs(read(log, before=6, limit=2)) == [4, 5]


def test_opening_a_large_log_reads_only_its_end(
    big: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = Reads(monkeypatch)
    reopened = AuditLog(big.path.parent)  # what the broker does at start
    assert reopened.seq == BIG
    assert reads.bytes < 64 * 1024, f"read {reads.bytes} bytes of a {BIG}-line log to open it"
    reopened.close()


def test_opening_a_log_whose_last_line_is_long_or_torn_and_huge(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = AuditLog(tmp_path)
    fill(log, 3)
    log.close()
    # A last entry longer than any written now (an old log's 100 KiB tool name): still followed.
    with_long = AuditLog(tmp_path)
    with_long.append(
        caller=CALLER,
        tool="x" * 100_000,
        outcome="error",
        code=-32602,
        duration_us=1,
        arguments={},
    )
    with_long.close()
    assert AuditLog(tmp_path).seq == 4
    # A torn append with no line end for 3 MiB: dropped, and the chain follows line 4.
    with (tmp_path / "audit.jsonl").open("ab") as f:
        f.write(b"y" * (3 << 20))
    caplog.clear()
    reopened = AuditLog(tmp_path)
    assert reopened.seq == 4
    # Only the torn append is reported: the log's last line and its head are fine.
    assert [(r.levelname, r.getMessage().split(";")[0]) for r in caplog.records] == [
        ("WARNING", f"audit log {tmp_path / 'audit.jsonl'} ends in a partial line")
    ]
    assert (tmp_path / "audit.jsonl").read_bytes().endswith(b"}\n")
    reopened.append(caller=CALLER, tool="t", outcome="ok", code=None, duration_us=1, arguments={})
    reopened.close()
    assert [e["seq"] for e in read_entries(tmp_path / "audit.jsonl")] == [1, 2, 3, 4, 5]
    assert list(verify(tmp_path / "audit.jsonl", tmp_path / "audit.head")) == []


async def test_verify_lists_at_most_200_problems_and_counts_the_rest(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    fill(log, 300)
    lines = log.path.read_bytes().splitlines()
    # Every line edited: 300 hash mismatches, and the head still matches the last line's hash.
    log.path.write_bytes(b"".join(line.replace(b'"ok"', b'"no"') + b"\n" for line in lines))
    answer = tools_for(log).read_audit_log({"latest": True, "limit": 1, "verify": True})
    result = await answer
    problems = result["problems"]
    assert len(problems) == 201
    assert problems[0] == "line 1: hash mismatch: the entry was edited"
    assert problems[-1].startswith("… and 100 more (all of them: kiki tools log --file ")
    log.close()


async def test_a_verify_problem_quoting_a_huge_value_is_cut_to_fit(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    fill(log, 2)
    with log.path.open("ab") as f:  # a line whose seq is a 600 KB string, quoted by verify
        f.write(orjson.dumps({"seq": "9" * 600_000, "hash": "x"}) + b"\n")
    answer = tools_for(log).read_audit_log({"latest": True, "limit": 1, "verify": True})
    problems = (await answer)["problems"]
    assert problems[0].startswith("line 3: sequence 999")
    assert problems[0].endswith("…")
    assert max(len(p.encode()) for p in problems) <= 1000
    log.close()
