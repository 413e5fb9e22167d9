"""The head against the log's end: one rule (``head_agrees``) for the broker reopening its log
and for ``verify``. A head one line behind a line that chains on from it is a writer stopped
between the line and the head, not tampering; any other disagreement is."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiki_tool_broker.audit import AuditLog
from libkiki.audit import encode_entry, format_head, parse_head, read_entries, verify

pytestmark = pytest.mark.unit


def written(tmp_path: Path, lines: int) -> tuple[AuditLog, list[tuple[int, str]]]:
    """A closed log of ``lines`` calls, and every line's (seq, hash)."""
    log = AuditLog(tmp_path)
    for k in range(lines):
        log.append(
            caller={"uid": 1000, "pid": 7},
            tool="org.example.echo",
            outcome="ok",
            code=None,
            duration_us=k,
            arguments={"k": k},
        )
    log.close()
    ends = [(int(e["seq"]), str(e["hash"])) for e in read_entries(log.path)]
    return log, ends


def test_a_head_one_line_behind_a_line_that_chains_on_verifies(tmp_path: Path) -> None:
    log, ends = written(tmp_path, 3)
    log.head_path.write_bytes(format_head(*ends[1]))  # stopped between line 3 and its head
    assert list(verify(log.path, log.head_path)) == []
    reopened = AuditLog(log.path.parent)  # the broker takes it the same way: the chain goes on
    reopened.close()
    assert parse_head(log.head_path.read_bytes()) == ends[2]


@pytest.mark.parametrize("head", ["two lines behind", "one behind, another hash", "ahead"])
def test_any_other_head_is_reported_by_verify_and_kept_by_the_broker(
    tmp_path: Path, head: str
) -> None:
    log, ends = written(tmp_path, 3)
    recorded = {
        "two lines behind": ends[0],
        "one behind, another hash": (ends[1][0], "f" * 64),
        "ahead": (ends[2][0] + 1, ends[2][1]),
    }[head]
    log.head_path.write_bytes(format_head(*recorded))
    problems = list(verify(log.path, log.head_path))
    assert [p.message for p in problems] == [
        f"the log ends at seq 3 but audit.head records seq {recorded[0]}: entries at the end "
        "were removed or changed"
    ]
    reopened = AuditLog(log.path.parent)  # the chain continues from the head: the gap stays visible
    reopened.close()
    assert parse_head(log.head_path.read_bytes()) == recorded


def test_a_snapshot_s_head_is_never_taken_as_behind(tmp_path: Path) -> None:
    """The head a live check passes is the writer's own, moved with each line: a line past it
    was written by someone else, even one that chains on."""
    log, _ = written(tmp_path, 2)
    reopened = AuditLog(log.path.parent)
    end, head = reopened.snapshot()
    reopened.close()
    assert list(verify(log.path, end=end, head=head)) == []
    last = list(read_entries(log.path))[-1]
    forged = {**last, "seq": 3, "prev": last["hash"]}
    del forged["hash"]
    with log.path.open("ab") as out:
        out.write(encode_entry(forged)[0])
    assert [p.message for p in verify(log.path, end=log.path.stat().st_size, head=head)] == [
        "the log ends at seq 3 but audit.head records seq 2: entries at the end were removed "
        "or changed"
    ]
