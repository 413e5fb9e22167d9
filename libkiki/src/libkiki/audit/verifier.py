"""Checking the whole chain of an audit log, a line at a time."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import orjson

from libkiki.audit.chain import GENESIS, chain_hash, head_agrees, parse_head

VERIFY_LINE = 1 << 20
"""The longest line :func:`verify` reads into memory; a longer one is a problem, stepped over."""


@dataclass(frozen=True, slots=True)
class Problem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


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
    # A head the caller holds (the writer's own, in memory, moved with each line) is never
    # behind: only a head file can be, by a stop between a line and its head.
    held = head is not None
    prev, seq = GENESIS, 0
    last_prev = GENESIS  # the last line's prev (the hash before ``prev``)
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
                if chain_hash(str(entry.get("prev")), entry) != claimed:
                    yield Problem(n, "hash mismatch: the entry was edited")
                last_prev, prev = prev, str(claimed)
                seq = int(entry["seq"]) if isinstance(entry.get("seq"), int) else seq + 1
    name = head_path.name if head_path is not None else "audit.head"
    if head is None and head_path is not None and head_path.exists():
        head = parse_head(head_path.read_bytes())
        if head is None:
            yield Problem(0, f"{name} is unreadable")
            return
    if head is not None and not (
        head == (seq, prev) if held else head_agrees(head, seq, prev, last_prev)
    ):
        yield Problem(
            seq,
            f"the log ends at seq {seq} but {name} records seq {head[0]}: entries at the end "
            "were removed or changed",
        )


def _verify_lines(log: BinaryIO, end: int | None) -> Iterator[bytes | None]:
    """The lines of ``log`` without their newline, up to byte ``end``; None for one over
    ``VERIFY_LINE`` (read past in blocks, never held)."""
    left = end
    while left is None or left > 0:
        want = VERIFY_LINE + 1 if left is None else min(VERIFY_LINE + 1, left)
        raw = log.readline(want)
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
