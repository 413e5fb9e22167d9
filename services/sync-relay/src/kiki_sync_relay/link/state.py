"""The device's live state the link writes into each session it serves (sans-I/O).

One :class:`DeviceState` for the relay, fed by the broker's streams and tools
(:mod:`.broker`), read by every session's link (:mod:`.session_link`). Each key is one
property of ``dev.kiki.session.defs#deviceState``, replaced whole when it changes; ``stale``
names the keys whose source is lost for now (their values are the last known). Every value is
bounded here: the lists by their lengths below, the screen by :class:`~.screen.Screen`.
"""

from __future__ import annotations

import fnmatch
import os
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Final

from kiki_sync_relay.link.screen import Screen

KEYS: Final = ("screen", "nowPlaying", "notifications", "sensors", "tools", "calls")
MAX_NOTIFICATIONS = 50
MAX_CALLS = 50
MAX_SENSORS = 16
MAX_TOOLS = 1024


def now_iso(now: datetime | None = None) -> str:
    """A datetime string as the lexicons' ``datetime`` format takes it (UTC, milliseconds)."""
    moment = now or datetime.now(UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class DeviceState:
    """The latest value of each key, which keys are stale, and who to tell of a change."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = os.getpid() if pid is None else pid  # whose calls are the link's own
        self.screen = Screen()
        # Every key's value but the screen's, which is rendered only when it is written
        # (:meth:`current`): an a11y stream may say more each second than the link writes.
        self.values: dict[str, Any] = {
            "nowPlaying": None,
            "notifications": [],
            "sensors": [],
            "tools": [],
            "calls": [],
        }
        # Nothing is known until its source answers.
        self.stale: set[str] = set(KEYS)
        self.listeners: set[Callable[[str], None]] = set()
        self._players: dict[str, dict[str, Any]] = {}
        self._notifications: deque[dict[str, Any]] = deque(maxlen=MAX_NOTIFICATIONS)
        self._calls: deque[dict[str, Any]] = deque(maxlen=MAX_CALLS)

    # -- changes ----------------------------------------------------------------------------

    def _changed(self, key: str) -> None:
        for listener in list(self.listeners):
            listener(key)

    def current(self, key: str) -> Any:
        """The value of ``key`` now (the screen rendered: only its apps changed since the last
        time are flattened again). Shared: not to be changed by the caller."""
        return self.screen.value() if key == "screen" else self.values[key]

    def set(self, key: str, value: Any) -> None:
        if self.values.get(key) != value:
            self.values[key] = value
            self._changed(key)

    def mark(self, key: str, stale: bool) -> None:
        """Note that ``key``'s source is lost (``stale``) or back."""
        if (key in self.stale) != stale:
            if stale:
                self.stale.add(key)
            else:
                self.stale.discard(key)
            self._changed("stale")

    def stale_list(self) -> list[str]:
        return [key for key in KEYS if key in self.stale]

    # -- reducers, one per source -----------------------------------------------------------

    def screen_changed(self, message: Any) -> None:
        if self.screen.apply(message):
            self._changed("screen")

    def screen_reset(self) -> None:
        """The a11y stream starts again (its provider came back): its apps are told anew."""
        if self.screen.apps:
            self.screen.clear()
            self._changed("screen")

    def playback(self, message: Any) -> None:
        if not isinstance(message, dict):
            return
        now_playing = message.get("nowPlaying")
        if isinstance(now_playing, dict) and isinstance(now_playing.get("player"), dict):
            name = str(now_playing["player"].get("player", ""))
            self._players.pop(name, None)
            self._players[name] = now_playing  # the most recently changed last
            while len(self._players) > 64:
                del self._players[next(iter(self._players))]
        elif isinstance(player := message.get("player"), str):
            self._players.pop(player, None)
        self.set("nowPlaying", self._now_playing())

    def _now_playing(self) -> dict[str, Any] | None:
        players = list(self._players.values())
        active = [p for p in players if p["player"].get("active")]
        chosen = active or players
        return chosen[-1] if chosen else None

    def players_reset(self) -> None:
        self._players.clear()
        self.set("nowPlaying", None)

    def notification(self, message: Any, now: datetime | None = None) -> None:
        if isinstance(message, dict):
            self._notifications.append({**message, "at": now_iso(now)})
            self.set("notifications", list(self._notifications))

    def audit(self, entry: Any) -> None:
        """One audit line: a tool call goes into ``calls``; subscriptions' lines do not, nor
        the link's own calls (reading the sensors, listing the providers), only those it makes
        for someone."""
        if not isinstance(entry, dict) or entry.get("event", "call") != "call":
            return
        caller = entry.get("caller")
        own = isinstance(caller, dict) and caller.get("pid") == self.pid
        if own and entry.get("onBehalfOf") is None:
            return
        call = {
            "at": entry.get("time"),
            "tool": entry.get("tool"),
            "caller": entry.get("caller"),
            "outcome": entry.get("outcome"),
        }
        if entry.get("onBehalfOf") is not None:
            call["onBehalfOf"] = entry["onBehalfOf"]
        self._calls.append(call)
        self.set("calls", list(self._calls))

    def tools_listed(self, names: Iterable[str], allowed: Iterable[str]) -> None:
        globs = list(allowed)
        chosen = sorted({n for n in names if any(fnmatch.fnmatchcase(n, g) for g in globs)})[
            :MAX_TOOLS
        ]
        self.set("tools", chosen)

    def sensors_read(self, readings: list[dict[str, Any]]) -> None:
        self.set("sensors", readings[:MAX_SENSORS])
