"""Admission at ``accept()``: who may hold one more connection, decided once for every listener.

Sans-I/O: :class:`Admission` counts the connections a listener holds, in total and per uid, and
answers each accepted peer (named by its ``SO_PEERCRED`` uid) with a :class:`Ticket` or a
:class:`Refused`; :class:`LogBudget` decides which refusals get a log line. No sockets, no clock
reads (callers pass ``now``). The asyncio half, :class:`libkiki.servers.Gate`, reads the uid,
sends the protocol's refusal and closes.

A connection counts from ``accept()`` to its close, so a burst of connects cannot slip past the
limit while their tasks wait to run. Per user: at most ``max_per_user`` connections, so that one
local user reconnecting as fast as it can does not lock the others out. Root and the service's
own uid are held only to the total: root can stop the service anyway, and a service's own
processes (its tools, its helpers) are not the other users the limit protects.

Each listener keeps the connection counters the root README names (Operating a device):
``connections`` (a gauge), ``connections_accepted``, ``connections_refused``,
``connections_refused_user``; :func:`libkiki.servers.accept_forever` adds ``accept_errors``.
"""

from __future__ import annotations

import errno
from collections import Counter
from dataclasses import dataclass

from libkiki.errors import LimitExceeded

__all__ = [
    "ACCEPT_BACKOFF",
    "SHORTAGE",
    "Admission",
    "AdmissionLimits",
    "LogBudget",
    "Refused",
    "Ticket",
]

# Running out of descriptors or memory is transient: back off instead of spinning on accept().
ACCEPT_BACKOFF = 0.1
# Out of descriptors or memory: what accept() and identifying its peer wait out.
SHORTAGE = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

# Refused peers held at once while their input is read to its end (so that closing does not
# reset them before they read the refusal); past this, a refused peer is closed as soon as
# what it already sent is discarded.
MAX_LINGERING = 64


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    max_connections: int
    max_per_user: int
    exempt: frozenset[int] = frozenset({0})  # uids held only to the total

    @classmethod
    def of(
        cls, max_connections: int, max_per_user: int | None = None, own_uid: int | None = None
    ) -> AdmissionLimits:
        """``max_per_user`` defaults to a quarter of ``max_connections`` (at least 1)."""
        per_user = max(1, max_connections // 4) if max_per_user is None else max_per_user
        exempt = frozenset({0} if own_uid is None else {0, own_uid})
        return cls(max_connections, min(per_user, max_connections), exempt)


class Ticket:
    """One admitted connection; handed back to :meth:`Admission.release` when it closes."""

    __slots__ = ("open", "uid")

    def __init__(self, uid: int) -> None:
        self.uid = uid
        self.open = True


@dataclass(frozen=True, slots=True)
class Refused:
    """Not admitted: ``error`` is what the peer is told; ``linger`` says whether to read its
    input to the end before closing (a slot among :data:`MAX_LINGERING` was taken for it, to
    be given back with :meth:`Admission.lingered`)."""

    uid: int
    error: LimitExceeded
    per_user: bool
    linger: bool


class Admission:
    def __init__(self, limits: AdmissionLimits, counters: Counter[str] | None = None) -> None:
        self.limits = limits
        self.counters: Counter[str] = Counter() if counters is None else counters
        self.live = 0
        self.by_uid: Counter[int] = Counter()
        self.lingering = 0

    def admit(self, uid: int) -> Ticket | Refused:
        """Count the connection ``accept()`` just returned, from a peer of ``uid``."""
        limits = self.limits
        self.counters["connections_accepted"] += 1
        if self.live >= limits.max_connections:
            return self._refuse(
                uid, f"too many connections (limit {limits.max_connections})", per_user=False
            )
        if uid not in limits.exempt and self.by_uid[uid] >= limits.max_per_user:
            return self._refuse(
                uid,
                f"too many connections from uid {uid} (limit {limits.max_per_user} per user)",
                per_user=True,
            )
        self.live += 1
        self.by_uid[uid] += 1
        self.counters["connections"] += 1  # a sum, should several listeners share counters
        return Ticket(uid)

    def release(self, ticket: Ticket) -> None:
        """The connection closed (releasing twice is harmless)."""
        if not ticket.open:
            return
        ticket.open = False
        self.live -= 1
        left = self.by_uid[ticket.uid] - 1
        if left:
            self.by_uid[ticket.uid] = left
        else:
            del self.by_uid[ticket.uid]  # a uid that comes once must not stay in the table
        self.counters["connections"] -= 1

    def lingered(self) -> None:
        """A refused peer with ``linger`` set has been closed."""
        self.lingering -= 1

    def _refuse(self, uid: int, message: str, *, per_user: bool) -> Refused:
        self.counters["connections_refused"] += 1
        if per_user:
            self.counters["connections_refused_user"] += 1
        data = {"limit": self.limits.max_per_user if per_user else self.limits.max_connections}
        linger = self.lingering < MAX_LINGERING
        if linger:
            self.lingering += 1
        return Refused(uid, LimitExceeded(message, data=data), per_user, linger)


class LogBudget:
    """A token bucket for repetitive log lines: ``burst`` at once, then one per ``interval``
    seconds. What it holds back is counted, for a summary line (:meth:`take_suppressed`), so a
    flood costs a bounded number of lines and still says how large it was."""

    def __init__(self, burst: int = 10, interval: float = 10.0) -> None:
        self.burst = burst
        self.interval = interval
        self.suppressed = 0
        self._tokens = float(burst)
        self._last: float | None = None

    def allow(self, now: float) -> bool:
        """May a line be logged at ``now`` (monotonic seconds)? If not, it is counted."""
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) / self.interval)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self.suppressed += 1
        return False

    def take_suppressed(self) -> int:
        """Lines held back since the last call; the count starts again from zero."""
        count, self.suppressed = self.suppressed, 0
        return count
