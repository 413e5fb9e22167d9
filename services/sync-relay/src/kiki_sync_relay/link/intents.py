"""Intents and their results as the device link reads and writes them (sans-I/O).

An intent (``dev.kiki.session.defs#intent``) is checked in this order, each failure answered
at once with nothing run: the rate of its ``by`` (``refused``, ``LimitExceeded``; first, so a
flood of malformed or expired intents is limited too: one without a ``by`` takes from one
bucket shared by all such), its shape (``refused``, ``InvalidParams``), its ``createdAt`` not
more than :data:`MAX_SKEW` seconds ahead of the device's clock (``refused``, ``InvalidParams``:
a time in the future would escape the age check below and misorder the logs), its deadline
and its age (``expired``: written more than ``max_age`` seconds ago by its ``createdAt``), its
tool among the session's (``refused``, ``NotFound``).

Numbers: Yjs keeps a JSON number as JavaScript does, with no integer type, and pycrdt reads
every one back as a float (``{"n": 1}`` reads ``{"n": 1.0}``), while the lexicons have
``integer`` and no float type. So every whole float in an intent's input (finite, at any depth)
within ±2**53 is passed on as an int: a browser's or a Node client's
``seek({offsetUs: 5000000})`` reaches the tool as the integer it was. A larger one (``1e20``)
stays a float: no JavaScript client wrote it as an exact integer, and an int past 64 bits could
not be sent to the broker. Then it runs once through the broker; the broker's
answer becomes ``ok`` (its output), ``refused`` (nothing ran: policy, invalid arguments, a
limit) or ``error`` (the tool failed, timed out, or its provider left).

Old entries are pruned: those whose final result is older than ``keep`` seconds, and beyond
``max_entries`` the oldest finished ones. An entry left ``running`` longer than the link's call
timeout plus :data:`STUCK_MARGIN` with no call of the link running it is answered ``error``
(:func:`stuck`), so pruned in turn.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from kiki_sync_relay.limits import TokenBucket
from kiki_sync_relay.link.state import now_iso
from libkiki.errors import (
    Conflict,
    InvalidParams,
    KikiError,
    LimitExceeded,
    NotFound,
    PermissionDenied,
    Timeout,
)

INTENT_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
FINAL: Final = frozenset({"ok", "error", "refused", "expired"})
# Errors that say the tool never ran: the intent was refused, not failed.
REFUSALS: Final = (PermissionDenied, InvalidParams, NotFound, LimitExceeded, Conflict)
MAX_MESSAGE = 2048
MAX_BUCKETS = 1024
MAX_DEPTH = 64  # arrays and objects nested in an intent's input
# The JSON bytes of a tool's output a result carries; a larger one is told, not written (the
# session's document is bounded, and a result refused by it would leave the intent running).
MAX_OUTPUT = 256 * 1024
# Seconds an intent's createdAt may be ahead of the device's clock (two clocks set by NTP are
# well within it; more is a writer's clock wrong, or an intent dodging max_age).
MAX_SKEW = 60.0
# Seconds past the call timeout before a ``running`` entry no call runs is answered ``error``:
# the wait for the broker (BROKER_WAIT) and a retried join fit in it.
STUCK_MARGIN = 60.0
SAFE_INT = 2**53
# The bucket of the intents that name no ``by`` (malformed ones).
NOBODY = ""


@dataclass(frozen=True, slots=True)
class Intent:
    id: str
    tool: str
    input: dict[str, Any]
    by: str
    created: datetime
    deadline: datetime | None


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse(key: str, value: Any) -> Intent:
    """The intent stored under ``key``; :class:`InvalidParams` says why it is not one."""
    if not INTENT_ID.fullmatch(key):
        raise InvalidParams("an intent's id is 1 to 64 of A-Z a-z 0-9 _ -")
    if not isinstance(value, dict):
        raise InvalidParams("an intent is a JSON object")
    if value.get("id") != key:
        raise InvalidParams("an intent's id must be the key it is stored under")
    tool, arguments, by = value.get("tool"), value.get("input", {}), value.get("by")
    if not isinstance(tool, str) or not tool:
        raise InvalidParams("an intent names its tool (an NSID)")
    if not isinstance(arguments, dict):
        raise InvalidParams("an intent's input is a JSON object")
    if not isinstance(by, str) or not by:
        raise InvalidParams("an intent says who asks (by)")
    created = parse_time(value.get("createdAt"))
    if created is None:
        raise InvalidParams("an intent says when it was written (createdAt, a datetime)")
    deadline = parse_time(value.get("deadline"))
    if "deadline" in value and deadline is None:
        raise InvalidParams("an intent's deadline is a datetime")
    return Intent(key, tool, whole_numbers(arguments), by, created, deadline)


def whole_numbers(value: Any, depth: int = 0) -> Any:
    """``value`` with each whole float (at any depth) an int: the integer a JavaScript client
    wrote, which Yjs and pycrdt read back as a float; only within ±2**53, where a float is an
    exact integer (``1e20`` stays a float)."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and -SAFE_INT <= value <= SAFE_INT else value
    if isinstance(value, dict | list):
        if depth >= MAX_DEPTH:
            raise InvalidParams(f"an intent's input is nested more than {MAX_DEPTH} deep")
        if isinstance(value, dict):
            return {k: whole_numbers(v, depth + 1) for k, v in value.items()}
        return [whole_numbers(v, depth + 1) for v in value]
    return value


def result(
    status: str, *, output: Any = None, error: KikiError | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """A ``#result``: ``status`` with the tool's ``output`` or the ``error``'s class and text."""
    entry: dict[str, Any] = {"status": status, "at": now_iso(now)}
    if status == "ok":
        entry["output"] = output
    if error is not None:
        entry["error"] = {"name": type(error).__name__, "message": str(error)[:MAX_MESSAGE]}
    return entry


def succeeded(output: Any, now: datetime | None = None) -> dict[str, Any]:
    """The result of a call that answered ``output``: ``ok``, unless the output is more than
    :data:`MAX_OUTPUT` bytes of JSON (then ``error``, ``LimitExceeded``: it ran)."""
    size = len(json.dumps(output, separators=(",", ":"), default=str).encode())
    if size > MAX_OUTPUT:
        big = LimitExceeded(
            f"the tool ran, but its output ({size} bytes) is over the {MAX_OUTPUT} a result carries"
        )
        return result("error", error=big, now=now)
    return result("ok", output=output, now=now)


def failed(error: KikiError, now: datetime | None = None) -> dict[str, Any]:
    """The result of a call the broker answered with ``error``."""
    return result("refused" if isinstance(error, REFUSALS) else "error", error=error, now=now)


def is_final(entry: Any) -> bool:
    return isinstance(entry, dict) and entry.get("status") in FINAL


class Admission:
    """Decides what becomes of an intent before it runs: per ``by``, a token bucket of ``rate``
    intents per second (``burst`` at once), taken first; then written more than
    :data:`MAX_SKEW` seconds ahead it is refused, past its deadline or written more than
    ``max_age`` seconds ago expired. At most :data:`MAX_BUCKETS` people are remembered (the
    least recent forgotten, with a full bucket next time)."""

    def __init__(self, rate: float, burst: float, max_age: float = 300.0) -> None:
        self.rate = rate
        self.burst = burst
        self.max_age = max_age
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def too_old(self, intent: Intent, wall: datetime) -> bool:
        """Whether ``intent`` was written more than ``max_age`` seconds before ``wall``."""
        return (wall - intent.created).total_seconds() > self.max_age

    def take(self, by: Any, wall: datetime, now: float) -> dict[str, Any] | None:
        """A token from ``by``'s bucket (:data:`NOBODY`'s when it is not a name): None, or the
        ``refused`` result when it is empty."""
        who = by if isinstance(by, str) and by else NOBODY
        bucket = self._buckets.pop(who, None) or TokenBucket(self.rate, self.burst, now)
        self._buckets[who] = bucket
        while len(self._buckets) > MAX_BUCKETS:
            self._buckets.popitem(last=False)
        if bucket.take(now):
            return None
        limit = LimitExceeded(f"more than {self.rate:g} intents/s from {who[:64] or 'nobody'}")
        return result("refused", error=limit, now=wall)

    def check(
        self, intent: Intent, tools: list[str], wall: datetime, now: float, *, taken: bool = False
    ) -> dict[str, Any] | None:
        """The result that answers ``intent`` at once, or None: run it. ``taken``: its token
        was taken already (:meth:`take`)."""
        if not taken:
            limited = self.take(intent.by, wall, now)
            if limited is not None:
                return limited
        ahead = (intent.created - wall).total_seconds()
        if ahead > MAX_SKEW:
            future = InvalidParams(
                f"its createdAt is {ahead:.0f} s ahead of the device's clock "
                f"(at most {MAX_SKEW:g} s are allowed)"
            )
            return result("refused", error=future, now=wall)
        if intent.deadline is not None and intent.deadline <= wall:
            return result("expired", error=Timeout("past its deadline before it ran"), now=wall)
        if self.too_old(intent, wall):
            late = Timeout(f"written more than {self.max_age:g} s ago (its createdAt)")
            return result("expired", error=late, now=wall)
        if intent.tool not in tools:
            unknown = NotFound(f"no tool {intent.tool[:317]} in this session")
            return result("refused", error=unknown, now=wall)
        return None


def stuck(
    results: dict[str, Any], wall: datetime, older_than: float, running: set[str]
) -> list[str]:
    """The ids whose result has said ``running`` for more than ``older_than`` seconds while
    no call runs them (not in ``running``): a call whose answer was lost."""
    ids = []
    for key, entry in results.items():
        if key in running or not isinstance(entry, dict) or entry.get("status") != "running":
            continue
        at = parse_time(entry.get("at"))
        if at is None or (wall - at).total_seconds() > older_than:
            ids.append(key)
    return ids


def to_prune(
    intents: dict[str, Any], results: dict[str, Any], wall: datetime, keep: float, max_entries: int
) -> list[str]:
    """The ids whose intent and result go: finished more than ``keep`` seconds ago, then the
    oldest finished ones while more than ``max_entries`` remain."""
    finished: list[tuple[datetime, str]] = []
    for key in set(intents) | set(results):
        entry = results.get(key)
        if isinstance(entry, dict) and is_final(entry):
            at = parse_time(entry.get("at")) or wall
            finished.append((at, key))
        elif key not in intents:  # a result whose intent is gone
            finished.append((datetime.min.replace(tzinfo=UTC), key))
    finished.sort()
    gone = [key for at, key in finished if (wall - at).total_seconds() > keep]
    left = len(set(intents) | set(results)) - len(gone)
    for _, key in finished[len(gone) :]:
        if left <= max_entries:
            break
        gone.append(key)
        left -= 1
    return gone
