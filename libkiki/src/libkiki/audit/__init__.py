"""The audit log's format, read and checked: the contract between the broker, which appends
to it, and everyone who reads it (the broker's ``readAuditLog``, ``kiki tools log --file``).

``audit.jsonl`` holds one JSON line per tool call, chained by SHA-256. Each line is a JSON
object with ``seq``, ``time``, ``caller``, ``tool``, ``outcome``, ``code`` (when the call failed
with one), ``durationUs``, ``argsHash``, ``prev``, ``hash`` and, when a provider answered,
``provider`` (the lexicon ``dev.kiki.tools.defs#auditEntry``). An event stream's subscription
is audited too, when it opens and when it ends: such a line adds ``event`` (``subscribe`` or
``unsubscribe``; a line without ``event`` is a tool call, so logs written before streams read
the same), ``tool`` is the stream's NSID, ``argsHash`` the hash of its params, and an
``unsubscribe`` line has the ``reason`` it ended (``unsubscribed``, ``closed``, ``refused``,
``providerEnded``, ``denied``, ``shutdown``). Individual messages are never audited. A call a
trusted delegate made on behalf of a remote person adds ``onBehalfOf`` (``{"subject": ...,
"session": ...}``; ``caller`` is then the delegate, the relay): a line without it is a call for
the caller itself, so older logs read the same. A retry answered from an idempotency key's
record is ``outcome: "replay"``. The chain covers these keys like any other. ``hash`` is the
SHA-256 of ``prev`` followed by the line's canonical JSON without ``hash`` (keys sorted, no
spaces), and ``prev`` is the previous line's ``hash`` (64 zeros for the first). A line is
written as exactly that canonical JSON with ``hash`` added last, so it is serialised once. An
edited line breaks its own hash; a deleted or reordered line breaks the next line's ``prev`` or
the ``seq`` run; a cut tail is detected against ``audit.head``, which holds the last ``seq``
and ``hash`` in a fixed-width record rewritten in place after each append. The chain shows
tampering by anyone who cannot also rewrite every later line and the head; it is not a signature.

The arguments themselves are never logged, only their hash (``sha256:`` of their canonical
JSON): the log tells who called what and how it went, without keeping secrets passed in calls.

:mod:`.chain` is the format (a line, its hash, the head record), :mod:`.reader` pages the log
by ``seq`` reading only around the page, :mod:`.verifier` checks the whole chain. The appender
is the broker's (``kiki_tool_broker.audit``): it is the only writer.
"""

from libkiki.audit.chain import (
    EVENT_CALL,
    EVENT_SUBSCRIBE,
    EVENT_UNSUBSCRIBE,
    EVENTS,
    GENESIS,
    args_hash,
    chain_hash,
    encode_entry,
    event_of,
    format_head,
    head_agrees,
    parse_entry,
    parse_head,
    seq_of,
)
from libkiki.audit.reader import (
    ENTRY_MAX,
    MAX_LINE,
    PAGE_BYTES,
    PAGE_ENTRIES,
    SCAN_BYTES,
    AuditReader,
    AuditReadError,
    Page,
    read_entries,
)
from libkiki.audit.verifier import VERIFY_LINE, Problem, verify

__all__ = [
    "ENTRY_MAX",
    "EVENTS",
    "EVENT_CALL",
    "EVENT_SUBSCRIBE",
    "EVENT_UNSUBSCRIBE",
    "GENESIS",
    "MAX_LINE",
    "PAGE_BYTES",
    "PAGE_ENTRIES",
    "SCAN_BYTES",
    "VERIFY_LINE",
    "AuditReadError",
    "AuditReader",
    "Page",
    "Problem",
    "args_hash",
    "chain_hash",
    "encode_entry",
    "event_of",
    "format_head",
    "head_agrees",
    "parse_entry",
    "parse_head",
    "read_entries",
    "seq_of",
    "verify",
]
