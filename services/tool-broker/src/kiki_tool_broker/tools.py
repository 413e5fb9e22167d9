"""The broker's own tools: its providers, its audit log, its health.

They talk to the rest of the broker through what they read, nothing more: the tool table
(:class:`~kiki_tool_broker.registry.ToolRegistry`), the audit log, the service's health answer
and the line limit. The server runs them for calls the core admitted (:mod:`kiki_tool_broker.core`
checked the caller and the input before, and checks the output after).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

from kiki_tool_broker.audit import AuditLog
from kiki_tool_broker.registry import ToolRegistry
from libkiki.audit import PAGE_BYTES, AuditReader, AuditReadError, verify
from libkiki.errors import InvalidParams, KikiError, LimitExceeded, NotFound

LIST_PROVIDERS: Final = "dev.kiki.tools.listProviders"
READ_AUDIT_LOG: Final = "dev.kiki.tools.readAuditLog"
MAX_PROBLEMS: Final = 200  # problems a verify answer lists
PROBLEM_BYTES: Final = 1000  # each cut to this (a problem quotes the line's seq, as written)
GET_INFO_TOOL: Final = "dev.kiki.service.getInfo"

# Synchronous: the broker answers its own tools as the request is read. One that has to wait
# (readAuditLog's verify, in a thread) returns a future, which the broker settles.
Impl = Callable[[dict[str, Any]], Any]


class BuiltinTools:
    def __init__(
        self,
        registry: ToolRegistry,
        audit: AuditLog,
        info: Callable[[], dict[str, Any]],
        max_line: int,
    ) -> None:
        self.registry = registry
        self.audit = audit
        self.info = info
        self.max_line = max_line
        self.impls: dict[str, Impl] = {
            LIST_PROVIDERS: self.list_providers,
            READ_AUDIT_LOG: self.read_audit_log,
            GET_INFO_TOOL: self.get_info,
        }
        self._verifying = False

    @property
    def names(self) -> list[str]:
        return list(self.impls)

    def call(self, nsid: str, arguments: dict[str, Any]) -> Any:
        """The output of tool ``nsid``, or a future of it."""
        try:
            impl = self.impls[nsid]
        except KeyError:
            raise NotFound(f"no built-in tool {nsid}") from None
        return impl(arguments)

    def list_providers(self, args: dict[str, Any]) -> Any:
        registry = self.registry
        return {"providers": [registry.describe(p) for p in registry.providers()]}

    def read_audit_log(self, args: dict[str, Any]) -> Any:
        """A page of the audit log. Its cost is bounded by the page, not by the log: the page
        is found by bisecting the file on ``seq`` and read from there (``AuditReader``)."""
        # The lexicon has already checked the types and bounds of these.
        cursor: int | None = args.get("cursor")
        before: int | None = args.get("before")
        latest: bool = args.get("latest", False)
        limit: int = args.get("limit", 100)
        tool: str | None = args.get("tool")
        audit = self.audit
        backwards = latest or before is not None
        if backwards and cursor is not None:
            raise InvalidParams("cursor pages forwards; it cannot go with before or latest")
        if cursor is not None and cursor > audit.seq:
            raise _invalid_cursor("cursor", cursor, audit.seq)
        if before is not None and before > audit.seq + 1:
            raise _invalid_cursor("before", before, audit.seq)
        # A page must fit in an answer line with its text copy (see PAGE_BYTES).
        max_bytes = min(PAGE_BYTES, (self.max_line - 4096) // 3)
        try:
            with AuditReader(audit.path) as reader:
                if backwards:
                    page = reader.before(before, limit, tool, max_bytes=max_bytes)
                else:
                    page = reader.after(cursor or 0, limit, tool, max_bytes=max_bytes)
        except AuditReadError as exc:
            raise KikiError(str(exc)) from None
        result: dict[str, Any] = {"entries": page.entries}
        if page.newest is not None:
            # Forwards, the next page starts after the last line this one passed (also one of
            # another tool); backwards, following the log starts after its newest entry.
            result["cursor"] = page.newest
        if backwards and page.oldest is not None and not page.at_start:
            result["before"] = page.oldest
        if page.more:
            result["more"] = True
        if args.get("verify"):
            return self._verified(result)
        return result

    def _verified(self, result: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        """``result`` with the problems of the whole chain, checked in a thread: it reads the
        whole log, so it must not hold up the broker. One check at a time."""
        if self._verifying:
            raise LimitExceeded("the audit log is being verified for another call: ask again")
        audit = self.audit
        end, head = audit.snapshot()

        def check() -> dict[str, Any]:
            problems: list[str] = []
            more = 0
            try:
                for problem in verify(audit.path, end=end, head=head):
                    if len(problems) < MAX_PROBLEMS:
                        problems.append(_cut(str(problem)))
                    else:
                        more += 1
            finally:
                self._verifying = False  # when the thread is done, even if the call was cancelled
            if more:
                # The answer must fit in a line: the rest are counted, and the file has them.
                problems.append(
                    f"… and {more} more (all of them: kiki tools log --file {audit.path} --verify)"
                )
            return {**result, "problems": problems}

        self._verifying = True
        return asyncio.get_running_loop().run_in_executor(None, check)

    def get_info(self, args: dict[str, Any]) -> Any:
        return self.info()


def _invalid_cursor(name: str, value: int, last: int) -> InvalidParams:
    return InvalidParams(
        f"{name} {value} is past the end of the audit log (its last seq is {last})",
        data={"error": "InvalidCursor", name: value, "last": last},
    )


def _cut(text: str) -> str:
    """``text``, at most PROBLEM_BYTES of UTF-8 (the lexicon's limit on a problem is 1024)."""
    if len(text) * 4 <= PROBLEM_BYTES or len(encoded := text.encode()) <= PROBLEM_BYTES:
        return text
    return encoded[: PROBLEM_BYTES - 3].decode(errors="ignore") + "…"
