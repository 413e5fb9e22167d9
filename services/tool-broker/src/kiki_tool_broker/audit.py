"""The audit log's appender: one chained line per tool call, written by the broker alone.

The format, the chain, reading and verifying are libkiki's (:mod:`libkiki.audit`), shared with
every reader. What is the writer's own: the head, ``audit.head``, is rewritten in place after
each append (one fixed-size ``pwrite``: renaming a fresh file per call cost more than the rest
of a tool call together); a torn last line is dropped on open; and when the broker starts and
the log does not end where the head says, the chain continues from the head, not from the log,
so the gap stays in the log for ``--verify`` to report instead of being covered by a fresh head.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from libkiki.audit import (
    EVENT_CALL,
    GENESIS,
    AuditReader,
    AuditReadError,
    args_hash,
    encode_entry,
    format_head,
    head_agrees,
    parse_entry,
    parse_head,
)

log = logging.getLogger(__name__)

TOOL_MAX = 317  # bytes of an entry's `tool`: the longest NSID (a longer name is cut)
_TOOL_CHARS = TOOL_MAX // 4  # no string of this many characters is longer than that


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
        # Where the log must be cut back to before the next line: set while the fragment of a
        # short write (a full disk) could not be cut off at once.
        self._cut_to: int | None = None
        self._head_fd = os.open(self.head_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._head_behind = False  # the last head write failed: the head is behind the log
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
        if head_agrees(head, seq, digest, prev):
            return seq, digest
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
                raw = reader.last_line()
            except AuditReadError:
                raw = None
        last = parse_entry(raw)
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
        event: str | None = None,
        reason: str | None = None,
        on_behalf_of: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Append one entry: a tool call, or (``event``, libkiki.audit.EVENTS) a subscription
        opened or ended, ``tool`` its NSID, ``arguments`` its params, ``reason`` why it
        ended. ``on_behalf_of``: the remote person a trusted delegate (``caller``) acted for."""
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
        if event is not None and event != EVENT_CALL:  # absent: a call, as in older logs
            body["event"] = event
        if reason is not None:
            body["reason"] = reason
        if on_behalf_of is not None:  # absent: the caller acted for itself, as in older logs
            body["onBehalfOf"] = on_behalf_of
        line, digest = encode_entry(body)
        if self._cut_to is not None:
            os.ftruncate(self._fd, self._cut_to)
            self._cut_to = None
        if (written := os.write(self._fd, line)) != len(line):
            self._cut_short(written, len(line))
        seq = self._seq = self._seq + 1
        self._prev = digest
        body["hash"] = digest
        try:
            os.pwrite(self._head_fd, format_head(seq, digest), 0)
        except OSError as exc:
            self._head_failed(exc)
        else:
            if self._head_behind:
                self._head_behind = False
                log.info("%s is written again, at seq %d", self.head_path, seq)
        return body

    def _head_failed(self, exc: OSError) -> None:
        """The head could not be rewritten after a line that was (a full copy-on-write
        filesystem, where even an in-place write needs a free block). The line is recorded and
        stays so: the call is answered, and its idempotency key keeps its answer. The next
        append rewrites the head, and so does :meth:`close`; a head one line behind is what
        the recovery on open already takes (the broker stopped between a line and its head).
        Logged once per streak of failures."""
        if not self._head_behind:
            self._head_behind = True
            log.error(
                "%s could not be written (%s); it is written again with the next line",
                self.head_path,
                exc,
            )

    def _cut_short(self, written: int, size: int) -> None:
        """A write that stopped short (a full disk, a file size limit: the kernel does not
        say which): the line's fragment is cut off, so that the log never holds a torn line
        the chain goes on from, and the append fails with EIO (the call is answered -32603,
        never told it was recorded). A fragment that cannot be cut off now is cut off before
        the next line."""
        end = os.lseek(self._fd, 0, os.SEEK_END)
        self._cut_to = end - written
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, self._cut_to)
            self._cut_to = None
        raise OSError(
            errno.EIO,
            f"audit log {self.path}: the write stopped after {written} of {size} bytes "
            "(a full disk or a file size limit); line dropped",
        )

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
        """The log's length in bytes and its head, as of now: for :func:`libkiki.audit.verify`
        in another thread while appends go on (they happen on this one, line and head
        together)."""
        return os.fstat(self._fd).st_size, (self._seq, self._prev)

    def close(self) -> None:
        if self._head_behind:  # a last try, so that the next open finds the head whole
            with contextlib.suppress(OSError):
                self._write_head()
        for fd in (self._fd, self._head_fd):
            with contextlib.suppress(OSError):
                os.fsync(fd)
                os.close(fd)
