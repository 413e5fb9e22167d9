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
        """The log's last ``seq``, ``hash`` and ``prev``, after dropping a torn last line."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return 0, GENESIS, GENESIS
        if data and not data.endswith(b"\n"):
            # A crash cut the last append short: that entry never completed, drop its fragment
            # so the next entry starts on a line of its own.
            keep = data.rfind(b"\n") + 1
            log.warning(
                "audit log %s ends in a partial line; truncating %d bytes",
                self.path,
                len(data) - keep,
            )
            with open(self.path, "r+b") as f:
                f.truncate(keep)
            data = data[:keep]
        lines = data.splitlines()
        if not lines:
            return 0, GENESIS, GENESIS
        try:
            last = orjson.loads(lines[-1])
            return int(last["seq"]), str(last["hash"]), str(last["prev"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.error(
                "audit log %s has an unreadable last line; `kiki tools log --verify` "
                "will report it",
                self.path,
            )
            return len(lines), GENESIS, GENESIS

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
    ) -> dict[str, Any]:
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


def verify(path: Path, head_path: Path | None = None) -> Iterator[Problem]:
    """Yield every inconsistency in the chain; nothing when the log is intact."""
    prev, seq = GENESIS, 0
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""
    for n, raw in enumerate(data.splitlines(), start=1):
        try:
            entry = orjson.loads(raw)
            claimed = entry.pop("hash")
        except (orjson.JSONDecodeError, KeyError, AttributeError, TypeError):
            yield Problem(n, "not a JSON audit entry")
            prev, seq = GENESIS, seq + 1
            continue
        if entry.get("seq") != seq + 1:
            yield Problem(
                n, f"sequence {entry.get('seq')} follows {seq}: lines are missing or out of order"
            )
        if entry.get("prev") != prev:
            yield Problem(n, "does not chain to the line before it (a line was removed or changed)")
        if _chain(str(entry.get("prev")), entry) != claimed:
            yield Problem(n, "hash mismatch: the entry was edited")
        prev = str(claimed)
        seq = int(entry["seq"]) if isinstance(entry.get("seq"), int) else seq + 1
    if head_path is not None and head_path.exists():
        head = parse_head(head_path.read_bytes())
        if head is None:
            yield Problem(0, f"{head_path.name} is unreadable")
            return
        if head != (seq, prev):
            yield Problem(
                seq,
                f"the log ends at seq {seq} but {head_path.name} records seq "
                f"{head[0]}: entries at the end were removed or changed",
            )
