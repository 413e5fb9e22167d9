"""Reading pages of an audit log by ``seq``, without reading the log whole.

The log only grows, so a page is found by bisecting the file on ``seq`` (about 20 small reads
for any size of log) and read from there, forwards for the entries after a cursor, backwards
from the end for the newest ones. Every read is counted against a budget, so one page costs at
most a few MiB of reads however long the log is and whatever is in it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from libkiki.audit.chain import parse_entry, seq_of
from libkiki.errors import KikiError

PAGE_ENTRIES = 1000
"""Most entries in a page (the lexicon's ``limit`` maximum)."""
PAGE_BYTES = 320 * 1024
"""Most log bytes of entries in a page. An answer carries each entry twice, as structure and as
JSON text escaped once more (up to twice its size when it is all quotes), so this keeps a full
page under the 1 MiB line a client reads by default; about 800 ordinary entries (400 bytes
each) fit."""
SCAN_BYTES = 4 << 20
"""Bytes a page may read before it ends early (lines of other tools, unreadable lines)."""
MAX_LINE = 2 << 20
"""The longest line a reader steps over; a longer one is an error, not read to its end. The
broker's own lines are bounded by the longest tool name a request can carry (its 1 MiB
default line)."""
ENTRY_MAX = 64 * 1024
"""Lines longer than this are not returned as entries (no entry the broker writes for a real
tool comes near it); they are stepped over like any unreadable line."""
_BUDGET = 2 * SCAN_BYTES + 4 * MAX_LINE
_FIRST_READ = 4096
_BLOCK = 64 * 1024


class AuditReadError(KikiError):
    """The log cannot be paged within the budget (an overlong or unreadable stretch)."""


@dataclass(slots=True)
class Page:
    entries: list[dict[str, Any]]
    newest: int | None
    """``seq`` of the newest readable line the page passed (returned or filtered out)."""
    oldest: int | None
    """``seq`` of the oldest readable line the page passed."""
    at_start: bool
    """The page reaches back to the first line of the log."""
    more: bool = False
    """(Forwards) the page stopped at its limits before the end of the log."""


class AuditReader:
    """Pages of ``audit.jsonl`` by ``seq``, reading only around the page.

    It reads the file as it was when opened (up to its last complete line), with positioned
    reads, so an append made meanwhile is simply not part of this page. Use as a context
    manager; it holds one file descriptor.
    """

    def __init__(self, path: Path, *, budget: int = _BUDGET) -> None:
        self.budget = budget
        self.spent = 0
        try:
            self._fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._fd = None
            self.size = self.end = 0
            return
        try:
            self.size = os.fstat(self._fd).st_size
            # Only complete lines: an append being written (or a torn one) is not read.
            self.end = self._line_start_at_or_before(self.size, 0)
        except BaseException:
            os.close(self._fd)
            raise

    def __enter__(self) -> AuditReader:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- low level ---------------------------------------------------------------------------

    def _read(self, offset: int, n: int) -> bytes:
        assert self._fd is not None
        self.spent += n
        if self.spent > self.budget:
            raise AuditReadError(
                f"reading the audit log near byte {offset} took more than {self.budget} bytes: "
                "it has an overlong or unreadable stretch (check it with "
                "`kiki tools log --file audit.jsonl --verify`)"
            )
        data = os.pread(self._fd, n, offset)
        if len(data) != n:
            raise AuditReadError("the audit log was cut while it was being read")
        return data

    def _too_long(self, start: int) -> AuditReadError:
        return AuditReadError(
            f"the audit log has a line longer than {MAX_LINE} bytes near byte {start}: it is "
            "not an entry the broker wrote (check it with `kiki tools log --file audit.jsonl "
            "--verify`)"
        )

    def _line_start_at_or_before(self, pos: int, floor: int) -> int:
        """The start of the line holding byte ``pos`` (just past the last newline before it),
        never before ``floor``, which is a line start."""
        lo_limit = max(floor, pos - MAX_LINE - 1)
        scan_to = pos
        step = _FIRST_READ
        while scan_to > lo_limit:
            start = max(lo_limit, scan_to - step)
            nl = self._read(start, scan_to - start).rfind(b"\n")
            if nl >= 0:
                return start + nl + 1
            scan_to = start
            step = min(step * 2, _BLOCK)
        if lo_limit == floor:
            return floor
        raise self._too_long(lo_limit)

    def _lines_forward(self, pos: int, end: int) -> Iterator[tuple[int, bytes | None, int]]:
        """``(start, raw, next)`` for each line from the line start ``pos`` up to ``end``
        (a line start); ``raw`` is None for a line too long to be an entry."""
        buf = b""
        base = pos  # file offset of buf[0]
        step = _FIRST_READ
        while pos < end:
            i = pos - base
            nl = buf.find(b"\n", i)
            if nl >= 0:
                nxt = base + nl + 1
                raw = buf[i:nl]
                yield pos, (raw if len(raw) <= ENTRY_MAX else None), nxt
                pos = nxt
                continue
            have = base + len(buf)
            if have - pos > ENTRY_MAX:
                nxt = self._skip_forward(pos, have, end)
                yield pos, None, nxt
                pos = nxt
                buf, base = b"", nxt
                continue
            chunk = self._read(have, min(step, end - have))
            step = min(step * 2, _BLOCK)
            buf = buf[i:] + chunk
            base = pos

    def _skip_forward(self, start: int, have: int, end: int) -> int:
        """The end of an overlong line that starts at ``start``; read up to ``have``."""
        while have < end:
            if have - start > MAX_LINE:
                raise self._too_long(start)
            chunk = self._read(have, min(_BLOCK, end - have))
            nl = chunk.find(b"\n")
            if nl >= 0:
                return have + nl + 1
            have += len(chunk)
        return end

    def _lines_backward(self, end: int) -> Iterator[tuple[int, bytes | None, int]]:
        """``(start, raw, next)`` for each line before the line start ``end``, newest first;
        ``raw`` is None for a line too long to be an entry."""
        buf = b""
        base = end  # file offset of buf[0]; buf reaches at least to cur
        cur = end
        step = _FIRST_READ
        while cur > 0:
            j = cur - 1 - base  # where the newline ending this line is in buf
            nl = buf.rfind(b"\n", 0, j) if j > 0 else -1
            if nl >= 0 or (base == 0 and j >= 0):
                start = base + nl + 1
                raw = buf[nl + 1 : j]
                yield start, (raw if len(raw) <= ENTRY_MAX else None), cur
                cur = start
                continue
            if cur - base > ENTRY_MAX + 1:
                start = self._line_start_at_or_before(base, 0)
                yield start, None, cur
                cur = start
                buf, base = b"", cur
                continue
            n = min(step, base)
            step = min(step * 2, _BLOCK)
            buf = self._read(base - n, n) + buf[: cur - base]
            base -= n

    # -- finding a position ------------------------------------------------------------------

    def last_line(self) -> bytes | None:
        """The last complete line without its newline, however long (up to ``MAX_LINE``), for
        the appender to continue the chain from; None when the log has no line."""
        if self.end == 0:
            return None
        start, raw, end = next(self._lines_backward(self.end))
        if raw is None:  # longer than any entry written now, but maybe an older one
            raw = self._read(start, end - 1 - start)
        return raw

    def find_after(self, after: int) -> int:
        """The start of the first line whose ``seq`` is above ``after``, by bisection (the
        log is in ``seq`` order unless it was tampered with, which ``verify`` reports)."""
        lo, hi = 0, self.end
        if after <= 0:
            return 0
        while lo < hi:
            mid = (lo + hi) // 2
            p = self._line_start_at_or_before(mid, lo)
            for _, raw, nxt in self._lines_forward(p, hi):
                seq = seq_of(parse_entry(raw))
                if seq is None:
                    continue  # unreadable: decide by the next readable line
                if seq > after:
                    hi = p
                else:
                    lo = nxt
                break
            else:
                hi = p  # nothing readable from p on: the answer is before it
        return lo

    # -- pages -------------------------------------------------------------------------------

    def after(
        self, after: int, limit: int, tool: str | None = None, *, max_bytes: int = PAGE_BYTES
    ) -> Page:
        """Up to ``limit`` entries (and ``max_bytes`` of them) with ``seq`` above ``after``,
        oldest first."""
        page = Page([], None, None, at_start=False)
        size = 0
        start = self.find_after(after)
        page.at_start = start == 0
        scan_from = self.spent
        for _, raw, nxt in self._lines_forward(start, self.end):
            entry = parse_entry(raw)
            seq = seq_of(entry)
            if entry is None or seq is None or seq <= after:
                continue
            page.newest = seq
            if page.oldest is None:
                page.oldest = seq
            if tool is None or entry.get("tool") == tool:
                assert raw is not None
                page.entries.append(entry)
                size += len(raw)
            full = len(page.entries) >= limit or size >= max_bytes
            if full or self.spent - scan_from >= SCAN_BYTES:
                page.more = nxt < self.end
                break
        return page

    def before(
        self,
        before: int | None,
        limit: int,
        tool: str | None = None,
        *,
        max_bytes: int = PAGE_BYTES,
    ) -> Page:
        """Up to ``limit`` of the entries (and ``max_bytes`` of them) just before ``seq``
        ``before`` (None: the newest), oldest first."""
        page = Page([], None, None, at_start=False)
        size = 0
        end = self.end if before is None else self.find_after(before - 1)
        scan_from = self.spent
        newest_first: list[dict[str, Any]] = []
        reached = end
        for line_start, raw, _ in self._lines_backward(end):
            reached = line_start
            entry = parse_entry(raw)
            seq = seq_of(entry)
            if entry is None or seq is None:
                continue
            if page.newest is None:
                page.newest = seq
            page.oldest = seq
            if tool is None or entry.get("tool") == tool:
                assert raw is not None
                newest_first.append(entry)
                size += len(raw)
            if len(newest_first) >= limit or size >= max_bytes:
                break
            if self.spent - scan_from >= SCAN_BYTES:
                break
        page.at_start = reached == 0
        newest_first.reverse()
        page.entries = newest_first
        return page


def read_entries(path: Path, *, last: int | None = None) -> list[dict[str, Any]]:
    """The entries of the log at ``path`` (the ``last`` of its lines, when given), read whole;
    lines that are not JSON objects are stepped over. A missing file is an empty log."""
    lines = path.read_bytes().splitlines() if path.exists() else []
    if last is not None:
        lines = lines[-last:] if last > 0 else []
    entries = []
    for raw in lines:
        with contextlib.suppress(orjson.JSONDecodeError):
            entry = orjson.loads(raw)
            if isinstance(entry, dict):
                entries.append(entry)
    return entries
