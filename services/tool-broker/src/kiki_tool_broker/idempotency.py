"""Idempotent retries of tool calls: a bounded cache of first answers. Pure state, no I/O.

Remote clients retry over flaky links, so a ``tools/call`` may carry an idempotency key
(``_meta["dev.kiki/idempotencyKey"]``, a string of 1 to :data:`MAX_KEY_LENGTH` characters).
An entry is keyed by (caller principal, key): the caller's kernel identity
(``libkiki.principals.identity_of``: ``app:ID``, ``uid:1000+app:...``), or for a delegate's
call the remote person through that relay (``remote:alice via app:kiki-sync-relay``), so two
callers never share a key space and a delegate cannot replay another's answers. The broker's
core asks (:meth:`~kiki_tool_broker.core.BrokerCore.call`, ``release``); its forwarder holds
the joined calls' futures. The entry remembers the tool and the
arguments' hash (``libkiki.audit.args_hash``, the audit line's ``argsHash``):

* the first call gets :class:`Run` and runs; the server then reports its answer with
  :meth:`IdempotencyCache.finish` (or :meth:`~IdempotencyCache.abandon`, see below);
* a duplicate while it runs gets :class:`Join`: the server makes it wait for the first call's
  answer (a future per :attr:`Run.token`, resolved when the server calls ``finish``);
* a duplicate after it gets :class:`Replay`, the first answer, without running anything, for
  ``ttl`` seconds after that answer (the window; default 10 minutes);
* the same key with another tool or other arguments is :class:`~libkiki.errors.InvalidParams`
  (``data.rule`` says so), running or finished: the key names one call, and guessing which the
  caller meant would run the wrong one.

Which answers are kept: whatever the provider answered, a tool error included (it ran); a
timeout or a provider gone mid-call too, since the tool may have run, and running it again is
what the key is there to prevent. ``abandon`` is for a call that never reached a provider
(cancelled before it was forwarded, no provider, the broker's own limits): a retry then runs,
and callers that joined it are told to begin again.

Bounds: finished entries are dropped ``ttl`` after their answer, and oldest first past
``max_entries`` or ``max_bytes`` (the answers' sizes as the server encodes them): an answer
evicted before its window ends is forgotten, and a retry after that runs again (counted in
``counters["evicted"]``; size the limits so that this does not happen). An answer over
``max_result_bytes`` is not kept: its entry stays, without it, so a duplicate is refused
(:class:`~libkiki.errors.LimitExceeded`) rather than run again. Running entries are not evicted
(that would let a duplicate run); there are at most as many as calls in flight, and at most
``max_running`` (further keyed calls are refused with LimitExceeded). Time is passed in
(``now``, monotonic seconds).

The cache lives in the broker's memory: a broker restart forgets it, and a retry after a restart
runs the tool again. Each replay is audited (``outcome: "replay"``), a joined call likewise.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from libkiki.errors import InvalidParams, LimitExceeded

MAX_KEY_LENGTH = 128
DEFAULT_TTL = 600.0
DEFAULT_MAX_ENTRIES = 4096
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_RESULT_BYTES = 1024 * 1024
DEFAULT_MAX_RUNNING = 4096

Key = tuple[str, str]  # (caller principal, idempotency key)


@dataclass(frozen=True, slots=True)
class Run:
    """Run the call, then :meth:`IdempotencyCache.finish` (or ``abandon``) with ``token``."""

    token: int


@dataclass(frozen=True, slots=True)
class Join:
    """The same call is running: wait for the answer its ``token`` gets."""

    token: int


@dataclass(frozen=True, slots=True)
class Replay:
    """The same call ran: its answer, recorded at ``finished_at``."""

    result: Any
    finished_at: float


Outcome = Run | Join | Replay


@dataclass(slots=True)
class _Entry:
    key: Key
    tool: str
    args_hash: str
    token: int
    result: Any = None
    size: int = 0
    kept: bool = True  # False: the answer was too large to keep
    finished_at: float = 0.0
    joined: int = 0


class IdempotencyCache:
    def __init__(
        self,
        *,
        ttl: float = DEFAULT_TTL,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        max_running: int = DEFAULT_MAX_RUNNING,
    ) -> None:
        if ttl <= 0 or min(max_entries, max_bytes, max_result_bytes, max_running) < 1:
            raise ValueError("idempotency limits must be positive")
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_result_bytes = min(max_result_bytes, max_bytes)
        self.max_running = max_running
        self._running: dict[Key, _Entry] = {}
        self._by_token: dict[int, _Entry] = {}
        self._done: OrderedDict[Key, _Entry] = OrderedDict()  # oldest answer first
        self.bytes = 0
        self._tokens = itertools.count(1)
        self.counters = {"runs": 0, "joins": 0, "replays": 0, "mismatches": 0, "evicted": 0}

    def __len__(self) -> int:
        return len(self._running) + len(self._done)

    def begin(self, principal: str, key: str, tool: str, args_hash: str, now: float) -> Outcome:
        """What to do with a call carrying ``key``: run it, join the running one, or replay."""
        if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH:
            raise InvalidParams(
                f"an idempotency key is a string of 1 to {MAX_KEY_LENGTH} characters",
                data={"rule": "idempotencyKey", "limit": MAX_KEY_LENGTH},
            )
        self.expire(now)
        k = (principal, key)
        running = self._running.get(k)
        if running is not None:
            self._check(running, tool, args_hash)
            running.joined += 1
            self.counters["joins"] += 1
            return Join(running.token)
        done = self._done.get(k)
        if done is not None:
            self._check(done, tool, args_hash)
            if not done.kept:
                raise LimitExceeded(
                    "this call ran; its answer was too large to keep for a retry",
                    data={"limit": self.max_result_bytes, "size": done.size},
                )
            self.counters["replays"] += 1
            return Replay(done.result, done.finished_at)
        if len(self._running) >= self.max_running:
            raise LimitExceeded(
                "too many calls with idempotency keys running", data={"limit": self.max_running}
            )
        entry = _Entry(k, tool, args_hash, next(self._tokens))
        self._running[k] = entry
        self._by_token[entry.token] = entry
        self.counters["runs"] += 1
        return Run(entry.token)

    def finish(self, token: int, result: Any, size: int, now: float) -> int:
        """The call ``token`` answered ``result`` (``size`` bytes encoded): keep it for
        replays. Returns how many duplicates joined it (they get ``result`` too)."""
        entry = self._by_token.pop(token, None)
        if entry is None:
            return 0
        del self._running[entry.key]
        entry.finished_at = now
        entry.size = size
        if size <= self.max_result_bytes:
            entry.result = result
            self.bytes += size
        else:
            entry.kept = False  # the tool ran: a duplicate must not run it again
        self._done[entry.key] = entry
        self._shrink()
        return entry.joined

    def abandon(self, token: int) -> int:
        """The call ``token`` never reached a provider: forget it, so a retry runs. Returns
        how many joined it (they should :meth:`begin` again)."""
        entry = self._by_token.pop(token, None)
        if entry is None:
            return 0
        del self._running[entry.key]
        return entry.joined

    def expire(self, now: float) -> None:
        """Drop the answers older than ``ttl``."""
        while self._done:
            oldest = next(iter(self._done.values()))
            if now - oldest.finished_at < self.ttl:
                return
            self._evict()

    def _check(self, entry: _Entry, tool: str, args_hash: str) -> None:
        if entry.tool != tool or entry.args_hash != args_hash:
            self.counters["mismatches"] += 1
            raise InvalidParams(
                "this idempotency key was used for another call (other tool or arguments)",
                data={"rule": "idempotencyKey", "tool": entry.tool},
            )

    def _shrink(self) -> None:
        while self._done and (
            len(self._done) + len(self._running) > self.max_entries or self.bytes > self.max_bytes
        ):
            self._evict()
            self.counters["evicted"] += 1

    def _evict(self) -> None:
        _, entry = self._done.popitem(last=False)
        if entry.kept:
            self.bytes -= entry.size
