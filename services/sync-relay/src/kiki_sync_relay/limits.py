"""The relay's bounds on one client, and the per-client rate (a token bucket).

Sans-I/O: the bucket is given the time; no clock is read here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    max_sessions: int = 1024  # live (in memory) sessions
    max_clients: int = 256  # clients of one session
    max_message: int = 1 << 20  # bytes of one WebSocket message
    max_document: int = 64 << 20  # bytes of one session's document (updates since its snapshot)
    max_awareness_clients: int = 16  # awareness states one client may hold (the edge's too)
    rate: float = 500.0  # messages per second a client may send, on average
    burst: float = 2000.0  # ... and at once


class TokenBucket:
    """At most ``burst`` at once, refilled at ``rate`` per second."""

    __slots__ = ("_at", "_level", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._level = burst
        self._at = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        self._level = min(self.burst, self._level + (now - self._at) * self.rate)
        self._at = now
        if self._level < cost:
            return False
        self._level -= cost
        return True
