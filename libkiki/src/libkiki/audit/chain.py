"""One audit line and its place in the chain: canonical form, hash, the head record."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

EVENT_CALL = "call"
EVENT_SUBSCRIBE = "subscribe"
EVENT_UNSUBSCRIBE = "unsubscribe"
EVENTS = (EVENT_CALL, EVENT_SUBSCRIBE, EVENT_UNSUBSCRIBE)
"""What an entry records (its ``event``): a tool call (the key left out, as in every log
written before event streams), a subscription opened, or one ended (with its ``reason``)."""


def event_of(entry: dict[str, Any]) -> str:
    """An entry's ``event``; an entry without one is a tool call."""
    event = entry.get("event", EVENT_CALL)
    return event if isinstance(event, str) else EVENT_CALL


GENESIS = "0" * 64
"""The ``prev`` of the first entry."""
_CANON = orjson.OPT_SORT_KEYS


def args_hash(arguments: Any) -> str:
    """What an entry keeps of a call's arguments: ``sha256:`` of their canonical JSON."""
    if arguments == {}:
        return _EMPTY_ARGS  # most calls of queries: no arguments at all
    return "sha256:" + hashlib.sha256(orjson.dumps(arguments, option=_CANON)).hexdigest()


_EMPTY_ARGS = "sha256:" + hashlib.sha256(b"{}").hexdigest()


def chain_hash(prev: str, body: dict[str, Any]) -> str:
    """The ``hash`` of an entry ``body`` (everything but ``hash``) that follows ``prev``."""
    return hashlib.sha256(prev.encode() + orjson.dumps(body, option=_CANON)).hexdigest()


def encode_entry(body: dict[str, Any]) -> tuple[bytes, str]:
    """The line (with its newline) for ``body``, which follows ``body["prev"]``, and its hash.

    The canonical form is what the hash covers; the line is that form with the hash added
    last, so a call's entry is serialised once.
    """
    canonical = _dumps(body, option=_CANON)
    digest = _sha256(body["prev"].encode() + canonical).hexdigest()
    return b"".join((canonical[:-1], b',"hash":"', digest.encode(), b'"}\n')), digest


_dumps = orjson.dumps
_sha256 = hashlib.sha256


def format_head(seq: int, digest: str) -> bytes:
    """The head record: fixed width, so rewriting it in place never leaves a longer old tail."""
    return f"{seq:020d} {digest}\n".encode()


def parse_head(data: bytes) -> tuple[int, str] | None:
    """``(seq, hash)`` of a head record; None when it is not one."""
    parts = data.decode(errors="replace").split()
    if len(parts) != 2 or not parts[0].isdigit() or len(parts[1]) != 64:
        return None
    return int(parts[0]), parts[1]


def head_agrees(head: tuple[int, str], seq: int, digest: str, prev: str) -> bool:
    """Whether a log whose last line has ``seq``, hash ``digest`` and ``prev`` agrees with
    ``head``: it ends where the head says, or one line past it that chains on from it (the
    writer stopped between appending a line and rewriting the head, which it does after each
    line). Anything else means lines at the end were removed or changed."""
    return head == (seq, digest) or (seq == head[0] + 1 and prev == head[1])


def parse_entry(raw: bytes | None) -> dict[str, Any] | None:
    """A line as a JSON object; None for anything else (a line too long to read is None)."""
    if raw is None:
        return None
    try:
        entry = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return entry if isinstance(entry, dict) else None


def seq_of(entry: Any) -> int | None:
    seq = entry.get("seq") if isinstance(entry, dict) else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None
