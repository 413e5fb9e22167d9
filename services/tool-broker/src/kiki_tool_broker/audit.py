"""The append-only audit log: one JSON line per tool call, chained by SHA-256.

Each line is a JSON object with ``seq``, ``time``, ``caller``, ``tool``, ``outcome``, ``code``
(when the call failed with one), ``durationUs``, ``argsHash``, ``prev`` and ``hash`` (the
lexicon ``dev.kiki.tools.defs#auditEntry``), where ``hash`` is the SHA-256 of ``prev``
followed by the line's canonical JSON without ``hash`` (keys sorted, no spaces), and ``prev`` is
the previous line's ``hash`` (64 zeros for the first). A line is written as exactly that
canonical JSON with ``hash`` added last, so it is serialised once. An edited line breaks its
own hash; a deleted or reordered line breaks the next line's ``prev`` or the ``seq`` run; a cut
tail is detected against ``audit.head``, which holds the last ``seq`` and ``hash``, rewritten in
place after each append (one fixed-size ``pwrite``: renaming a fresh file per call cost more
than the rest of a tool call together). When the broker starts and the log does not end where
the head says, the chain continues from the head, not from the log, so the gap stays in the
log for ``--verify`` to report instead of being covered by a fresh head. The chain shows
tampering by anyone who cannot also rewrite every later line and the head; it is not a
signature.

The arguments themselves are never logged, only their hash (``sha256:`` of their canonical
JSON): the log tells who called what and how it went, without keeping secrets passed in calls.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

GENESIS = "0" * 64
TOOL_MAX = 317  # bytes of an entry's `tool`: the longest NSID (a longer name is cut)
_TOOL_CHARS = TOOL_MAX // 4  # no string of this many characters is longer than that
_CANON = orjson.OPT_SORT_KEYS


def args_hash(arguments: Any) -> str:
    if arguments == {}:
        return _EMPTY_ARGS  # most calls of queries: no arguments at all
    return "sha256:" + hashlib.sha256(orjson.dumps(arguments, option=_CANON)).hexdigest()


_EMPTY_ARGS = "sha256:" + hashlib.sha256(b"{}").hexdigest()


def _chain(prev: str, body: dict[str, Any]) -> str:
    return hashlib.sha256(prev.encode() + orjson.dumps(body, option=_CANON)).hexdigest()


@dataclass(frozen=True, slots=True)
class Problem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class AuditLog:
    """Appends chained entries to ``<dir>/audit.jsonl``; recovers the chain head on open."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "audit.jsonl"
        self.head_path = directory / "audit.head"
        self._seq, self._prev = self._continue_from()
        self._second = -1
        self._second_text = ""
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._head_fd = os.open(self.head_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._write_head()

    def _continue_from(self) -> tuple[int, str]:
        """The ``seq`` and ``hash`` the next entry follows: the log's last entry's, unless the
        head shows that entries were removed or rewritten since it was last written."""
        seq, digest, prev = self._recover()
        try:
            raw = self.head_path.read_bytes()
        except FileNotFoundError:
            return seq, digest
        head = parse_head(raw)
        if head is None:
            if raw:
                log.warning("%s is unreadable; the chain continues from the log", self.head_path)
            return seq, digest
        if head == (seq, digest) or (seq == head[0] + 1 and prev == head[1]):
            return seq, digest  # intact, or stopped between writing a line and the head
        log.error(
            "audit log %s ends at seq %d but %s records seq %d: entries were removed or "
            "changed since the head was written; the chain continues from the head, so "
            "`kiki tools log --verify` reports the gap",
            self.path,
            seq,
            self.head_path.name,
            head[0],
        )
        return head

    def _recover(self) -> tuple[int, str, str]:
        """The log's last ``seq``, ``hash`` and ``prev``, after dropping a torn last line.
        Only the end of the log is read, however long it is."""
        try:
            reader = AuditReader(self.path)
        except AuditReadError:
            # No line end within MAX_LINE of the end of the file: a huge torn append. Find
            # the last line end by reading the log through, drop what follows, look again.
            self._drop_torn_by_scanning()
            reader = AuditReader(self.path)
        with reader:
            if reader.end < reader.size:
                self._drop_torn(reader.end, reader.size)
            if reader.end == 0:
                return 0, GENESIS, GENESIS
            try:
                start, raw, end = next(reader._lines_backward(reader.end))
                if raw is None:  # longer than any entry written now, but maybe an older one
                    raw = reader._read(start, end - 1 - start)
            except AuditReadError:
                raw = None
        last = _parse(raw)
        if last is None:
            return self._recover_by_counting()
        try:
            return int(last["seq"]), str(last["hash"]), str(last["prev"])
        except (KeyError, TypeError, ValueError):
            return self._recover_by_counting()

    def _drop_torn(self, keep: int, size: int) -> None:
        # A crash cut the last append short: that entry never completed, drop its fragment so
        # the next entry starts on a line of its own.
        log.warning(
            "audit log %s ends in a partial line; truncating %d bytes", self.path, size - keep
        )
        os.truncate(self.path, keep)

    def _drop_torn_by_scanning(self) -> None:
        last_end = offset = 0
        with self.path.open("rb") as f:
            while block := f.read(1 << 20):
                if (nl := block.rfind(b"\n")) >= 0:
                    last_end = offset + nl + 1
                offset += len(block)
        if last_end < offset:
            self._drop_torn(last_end, offset)

    def _recover_by_counting(self) -> tuple[int, str, str]:
        """The last line cannot be read: count the lines (reading the log in blocks) so that
        the next ``seq`` follows them, and start a new chain; ``--verify`` reports the line."""
        lines = 0
        with self.path.open("rb") as f:
            while block := f.read(1 << 20):
                lines += block.count(b"\n")
        log.error(
            "audit log %s has an unreadable last line; `kiki tools log --verify` will report it",
            self.path,
        )
        return lines, GENESIS, GENESIS

    def append(
        self,
        *,
        caller: dict[str, Any],
        tool: str,
        outcome: str,
        code: int | None,
        duration_us: int,
        arguments: Any,
        now: datetime | None = None,
        provider: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if len(tool) > _TOOL_CHARS and len(encoded := tool.encode()) > TOOL_MAX:
            # As sent, but no longer than an NSID can be (the entry's lexicon), or every page
            # of the log holding it would fail readAuditLog's output check.
            tool = encoded[: TOOL_MAX - 3].decode(errors="ignore") + "…"
        body: dict[str, Any] = {
            "seq": self._seq + 1,
            "time": self._timestamp() if now is None else now.isoformat(timespec="microseconds"),
            "caller": caller,
            "tool": tool,
            "outcome": outcome,
            "durationUs": duration_us,
            "argsHash": args_hash(arguments),
            "prev": self._prev,
        }
        if code is not None:
            body["code"] = code
        if provider is not None:  # who answered, as the kernel identified it
            body["provider"] = provider
        canonical = orjson.dumps(body, option=_CANON)
        digest = hashlib.sha256(self._prev.encode() + canonical).hexdigest()
        # The canonical form is what the hash covers; the line is that form with the hash added.
        os.write(self._fd, b'%s,"hash":"%s"}\n' % (canonical[:-1], digest.encode()))
        self._seq += 1
        self._prev = digest
        self._write_head()
        body["hash"] = digest
        return body

    def _timestamp(self) -> str:
        """Now, as ``datetime.now(UTC).isoformat(timespec="microseconds")`` writes it; the part
        down to the second is formatted once a second."""
        ns = time.time_ns()
        second, fraction = divmod(ns, 1_000_000_000)
        if second != self._second:
            self._second = second
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._second_text}.{fraction // 1000:06d}+00:00"

    def _write_head(self) -> None:
        os.pwrite(self._head_fd, format_head(self._seq, self._prev), 0)

    @property
    def seq(self) -> int:
        return self._seq

    def snapshot(self) -> tuple[int, tuple[int, str]]:
        """The log's length in bytes and its head, as of now: for :func:`verify` in another
        thread while appends go on (they happen on this one, line and head together)."""
        return os.fstat(self._fd).st_size, (self._seq, self._prev)

    def close(self) -> None:
        for fd in (self._fd, self._head_fd):
            with contextlib.suppress(OSError):
                os.fsync(fd)
                os.close(fd)


def format_head(seq: int, digest: str) -> bytes:
    """The head record: fixed width, so rewriting it in place never leaves a longer old tail."""
    return f"{seq:020d} {digest}\n".encode()


def parse_head(data: bytes) -> tuple[int, str] | None:
    parts = data.decode(errors="replace").split()
    if len(parts) != 2 or not parts[0].isdigit() or len(parts[1]) != 64:
        return None
    return int(parts[0]), parts[1]


def read_entries(path: Path, *, last: int | None = None) -> list[dict[str, Any]]:
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


def verify(
    path: Path,
    head_path: Path | None = None,
    *,
    end: int | None = None,
    head: tuple[int, str] | None = None,
) -> Iterator[Problem]:
    """Yield every inconsistency in the chain; nothing when the log is intact.

    The log is read a line at a time (memory bounded by ``VERIFY_LINE``, whatever is in the
    file). ``end`` and ``head`` check a snapshot: the log's first ``end`` bytes against that
    head, as the broker does while it goes on appending; otherwise the whole file against
    ``head_path``.
    """
    prev, seq = GENESIS, 0
    try:
        log = path.open("rb")
    except FileNotFoundError:
        log = None
    if log is not None:
        with log:
            for n, raw in enumerate(_verify_lines(log, end), start=1):
                if raw is None:
                    yield Problem(n, f"longer than {VERIFY_LINE} bytes: not an audit entry")
                    prev, seq = GENESIS, seq + 1
                    continue
                try:
                    entry = orjson.loads(raw)
                    claimed = entry.pop("hash")
                except (orjson.JSONDecodeError, KeyError, AttributeError, TypeError):
                    yield Problem(n, "not a JSON audit entry")
                    prev, seq = GENESIS, seq + 1
                    continue
                if entry.get("seq") != seq + 1:
                    yield Problem(
                        n,
                        f"sequence {entry.get('seq')} follows {seq}: lines are missing or out of "
                        "order",
                    )
                if entry.get("prev") != prev:
                    yield Problem(
                        n, "does not chain to the line before it (a line was removed or changed)"
                    )
                if _chain(str(entry.get("prev")), entry) != claimed:
                    yield Problem(n, "hash mismatch: the entry was edited")
                prev = str(claimed)
                seq = int(entry["seq"]) if isinstance(entry.get("seq"), int) else seq + 1
    name = head_path.name if head_path is not None else "audit.head"
    if head is None and head_path is not None and head_path.exists():
        head = parse_head(head_path.read_bytes())
        if head is None:
            yield Problem(0, f"{name} is unreadable")
            return
    if head is not None and head != (seq, prev):
        yield Problem(
            seq,
            f"the log ends at seq {seq} but {name} records seq {head[0]}: entries at the end "
            "were removed or changed",
        )


VERIFY_LINE = 1 << 20
"""The longest line :func:`verify` reads into memory; a longer one is a problem, stepped over."""


def _verify_lines(log: Any, end: int | None) -> Iterator[bytes | None]:
    """The lines of ``log`` without their newline, up to byte ``end``; None for one over
    ``VERIFY_LINE`` (read past in blocks, never held)."""
    left = end
    while left is None or left > 0:
        want = VERIFY_LINE + 1 if left is None else min(VERIFY_LINE + 1, left)
        raw: bytes = log.readline(want)
        if not raw:
            return
        if left is not None:
            left -= len(raw)
        if raw.endswith(b"\n"):
            yield raw[:-1]
        elif len(raw) <= VERIFY_LINE:
            yield raw  # the last line, without its newline (or cut at ``end``)
        else:
            while raw and not raw.endswith(b"\n") and (left is None or left > 0):
                raw = log.readline(1 << 16 if left is None else min(1 << 16, left))
                if left is not None:
                    left -= len(raw)
            yield None


# -- reading pages ---------------------------------------------------------------------------
#
# The log only grows, so the broker never reads it whole to answer a query: a page is found by
# bisecting the file on ``seq`` (about 20 small reads for any size of log) and read from there,
# forwards for the entries after a cursor, backwards from the end for the newest ones. Every
# read is counted against a budget, so one page costs at most a few MiB of reads however long
# the log is and whatever is in it.

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


class AuditReadError(Exception):
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


def _seq_of(entry: Any) -> int | None:
    seq = entry.get("seq") if isinstance(entry, dict) else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def _parse(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        entry = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return entry if isinstance(entry, dict) else None


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
                seq = _seq_of(_parse(raw))
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
            entry = _parse(raw)
            seq = _seq_of(entry)
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
            entry = _parse(raw)
            seq = _seq_of(entry)
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
