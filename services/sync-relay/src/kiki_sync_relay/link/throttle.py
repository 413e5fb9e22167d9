"""How often each key of the device state is written into a session (sans-I/O).

Leading edge: a change to a key that was not written for its interval goes out at once (so a
lone change on the screen costs no wait); changes within the interval are merged into one
write at its end. A write the session refused (its document over its bound) pauses every key
for a growing while (:data:`PAUSE_FIRST` s doubling to :data:`PAUSE_MAX`), so a state that
does not fit is not rebuilt and sent again at the keys' rates. The caller gives the time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

# Seconds between two writes of a key (so at most 1/interval writes per second).
INTERVALS: Final[Mapping[str, float]] = {
    "screen": 0.1,
    "nowPlaying": 0.25,
    "notifications": 0.25,
    "calls": 0.25,
    "sensors": 1.0,
    "tools": 1.0,
    "stale": 0.0,
}
PAUSE_FIRST = 1.0
PAUSE_MAX = 60.0


class Throttle:
    def __init__(self, intervals: Mapping[str, float] = INTERVALS) -> None:
        self.intervals = dict(intervals)
        self._last: dict[str, float] = {}
        self._pending: set[str] = set()
        self._pause = 0.0
        self.paused_until = float("-inf")

    def mark(self, key: str) -> None:
        """``key`` changed and needs writing."""
        self._pending.add(key)

    def refused(self, now: float) -> None:
        """The session refused a write at ``now``: nothing is due for a while (longer each
        time until a write is :meth:`accepted`)."""
        self._pause = min(PAUSE_MAX, self._pause * 2) if self._pause else PAUSE_FIRST
        self.paused_until = now + self._pause

    def accepted(self) -> None:
        self._pause = 0.0

    def due(self, now: float) -> tuple[list[str], float | None]:
        """The keys to write now, and when the next of the others is due (None: none waits).
        The keys returned count as written at ``now``."""
        if now < self.paused_until:
            return [], self.paused_until if self._pending else None
        ready: list[str] = []
        wake: float | None = None
        for key in sorted(self._pending):
            at = self._last.get(key, float("-inf")) + self.intervals.get(key, 0.0)
            if at <= now:
                ready.append(key)
            else:
                wake = at if wake is None else min(wake, at)
        for key in ready:
            self._pending.discard(key)
            self._last[key] = now
        return ready, wake
