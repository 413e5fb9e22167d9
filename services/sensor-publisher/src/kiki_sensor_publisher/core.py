"""The notify socket's logic, sans-I/O: subscriptions, coalesced wake-ups, read policy, and the
checks of the requests' parameters.

No clock reads here: callers pass ``now`` (seconds, monotonic). A subscriber's wake-ups are one
dict ``{sensor: write index}`` that newer indices overwrite, so a subscriber that does not keep
up costs one dict entry per sensor, however far behind it is.

A subscription may instead ask for futex wake-ups (``wake: "futex"``): the reader sleeps on the
ring's wake counter, and the publisher wakes every such sleeper of a sensor with one system
call. Those subscriptions count for the sensor's pace (:attr:`WakeCore.fastest`) and in
:attr:`WakeCore.futex_waiters`, and get no wake-up messages.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from libkiki.errors import ConfigError, InvalidParams, LimitExceeded, NotFound
from libkiki.peer import PeerCred
from libkiki.principals import Principal, Principals

log = logging.getLogger(__name__)

WAKE: str = "sensors/wake"
GONE: str = "sensors/gone"
MAX_READ = 1024  # samples one sensors/read may ask for


@dataclass(eq=False)
class Subscriber:
    """One connection's subscriptions and its wake-up state."""

    id: int
    peer: PeerCred
    sensors: set[str] = field(default_factory=set)
    # sensor -> the shortest interval between wake-ups it asked for (0: every sample), as
    # given in the subscribe that named it: a later subscribe to other sensors keeps it.
    intervals: dict[str, float] = field(default_factory=dict)
    min_interval: float = 0.0  # the connection's pace: the most eager of its sensors
    futex: set[str] = field(default_factory=set)  # sensors it is woken for through the ring
    pending: dict[str, int] = field(default_factory=dict)
    delivered: dict[str, int] = field(default_factory=dict)  # last index each wake-up carried
    last_sent: float = float("-inf")
    wakeups: int = 0
    direct: int = 0  # wake-ups written straight to the transport (the fast path)
    coalesced: int = 0
    overruns: int = 0

    def view(self) -> dict[str, object]:
        return {
            "id": self.id,
            "uid": self.peer.uid,
            "pid": self.peer.pid,
            "sensors": sorted(self.sensors),
            "maxWakeupsPerSecond": _hz(self.min_interval),
            "maxWakeupsPerSensor": {s: _hz(i) for s, i in sorted(self.intervals.items())},
            "futex": sorted(self.futex),
            "wakeups": self.wakeups,
            "direct": self.direct,
            "coalesced": self.coalesced,
            "overruns": self.overruns,
            "pending": len(self.pending),
        }


def _hz(interval: float) -> int:
    return round(1 / interval) if interval else 0


class WakeCore:
    """Who is subscribed to what, and which wake-up each subscriber is owed."""

    def __init__(
        self,
        *,
        max_subscriptions: int,
        max_wakeups_hz: float,
        max_subscriptions_per_uid: int | None = None,
    ) -> None:
        self.max_subscriptions = max_subscriptions
        # So that one user cannot take the whole pool (None: no limit of its own).
        self.max_per_uid = max_subscriptions_per_uid or max_subscriptions
        self.max_wakeups_hz = max_wakeups_hz
        self.subscribers: dict[int, Subscriber] = {}
        self.by_sensor: dict[str, set[Subscriber]] = {}
        # sensor -> the shortest wake-up interval any subscriber wants (0: every sample). A
        # writer thread reads it, without a lock, to know how often a write is worth a wake-up.
        self.fastest: dict[str, float] = {}
        # sensor -> how many subscriptions to it want futex wake-ups (absent: none)
        self.futex_waiters: dict[str, int] = {}
        # sensor -> the shortest interval any subscriber woken by messages wants (absent: none)
        self.socket_fastest: dict[str, float] = {}
        # sensor -> subscriptions made to it so far (stats: who ever read it, not only now)
        self.subscriptions: dict[str, int] = {}
        self._next_id = 1

    def _recompute(self, sensor: str) -> None:
        subs = self.by_sensor.get(sensor)
        if subs:
            self.fastest[sensor] = min(s.intervals.get(sensor, 0.0) for s in subs)
        else:
            self.fastest.pop(sensor, None)
        sleepers = sum(1 for s in subs or () if sensor in s.futex)
        if sleepers:
            self.futex_waiters[sensor] = sleepers
        else:
            self.futex_waiters.pop(sensor, None)
        messages = [s.intervals.get(sensor, 0.0) for s in subs or () if sensor not in s.futex]
        if messages:
            self.socket_fastest[sensor] = min(messages)
        else:
            self.socket_fastest.pop(sensor, None)

    def connect(self, peer: PeerCred) -> Subscriber:
        sub = Subscriber(self._next_id, peer)
        self._next_id += 1
        self.subscribers[sub.id] = sub
        return sub

    def disconnect(self, sub: Subscriber) -> None:
        self.unsubscribe(sub, None)
        self.subscribers.pop(sub.id, None)

    def subscribe(
        self,
        sub: Subscriber,
        sensors: Iterable[str],
        max_wakeups: float | None,
        *,
        futex: bool = False,
    ) -> list[str]:
        names = list(dict.fromkeys(sensors))
        total = sum(len(s.sensors) for s in self.subscribers.values())
        new = [n for n in names if n not in sub.sensors]
        if total + len(new) > self.max_subscriptions:
            raise LimitExceeded(
                f"at most {self.max_subscriptions} subscriptions",
                data={"limit": self.max_subscriptions},
            )
        uid = sub.peer.uid
        mine = sum(len(s.sensors) for s in self.subscribers.values() if s.peer.uid == uid)
        if new and mine + len(new) > self.max_per_uid:
            raise LimitExceeded(
                f"at most {self.max_per_uid} subscriptions per user",
                data={"limit": self.max_per_uid, "uid": uid},
            )
        if max_wakeups is not None:
            if not 0 < max_wakeups <= self.max_wakeups_hz:
                raise InvalidParams(
                    f"maxWakeupsPerSecond must be in (0, {self.max_wakeups_hz:g}] or 0 for every "
                    "sample"
                )
            interval = 1.0 / max_wakeups
        else:
            interval = 0.0
        # The policy is the named sensors'; the others of this connection keep theirs.
        for name in names:
            if name not in sub.sensors:
                self.subscriptions[name] = self.subscriptions.get(name, 0) + 1
            sub.sensors.add(name)
            sub.intervals[name] = interval
            if futex:
                sub.futex.add(name)
                sub.pending.pop(name, None)  # owed nothing through the socket any more
            else:
                sub.futex.discard(name)
            self.by_sensor.setdefault(name, set()).add(sub)
            self._recompute(name)
        self._pace(sub)
        return names

    @staticmethod
    def _pace(sub: Subscriber) -> None:
        # One wake-up message covers all of a connection's sensors: it comes as often as the
        # most eager of them asked (a sensor batched more slowly may be woken more often).
        sub.min_interval = min(sub.intervals.values(), default=0.0)

    def unsubscribe(self, sub: Subscriber, sensors: Iterable[str] | None) -> list[str]:
        names = sorted(sub.sensors) if sensors is None else list(sensors)
        removed = []
        for name in names:
            if name in sub.sensors:
                sub.sensors.discard(name)
                sub.intervals.pop(name, None)
                sub.futex.discard(name)
                sub.pending.pop(name, None)
                sub.delivered.pop(name, None)
                subs = self.by_sensor.get(name)
                if subs is not None:
                    subs.discard(sub)
                    if not subs:
                        del self.by_sensor[name]
                self._recompute(name)
                removed.append(name)
        self._pace(sub)
        return removed

    def published(self, sensor: str, index: int, capacity: int) -> list[Subscriber]:
        """Record that ``sensor`` now has ``index`` records; returns who needs waking now
        (those that had nothing pending). ``capacity`` lets it count overruns: a subscriber whose
        last delivered wake-up the writer has lapped has certainly lost samples."""
        subs = self.by_sensor.get(sensor)
        if not subs:
            return []
        woken = []
        for sub in subs:
            if sensor in sub.futex:
                continue  # woken through the ring's futex, by the caller
            if sensor in sub.pending:
                sub.coalesced += 1
            elif not sub.pending:
                woken.append(sub)
            sub.pending[sensor] = index
            last = sub.delivered.get(sensor)
            if last is not None and index - last > capacity:
                sub.overruns += 1
                sub.delivered[sensor] = index  # count each lap once
        return woken

    def take(self, sub: Subscriber, now: float) -> tuple[dict[str, int] | None, float]:
        """The wake-up to send now, or ``(None, seconds to wait)`` under a batched policy."""
        if not sub.pending:
            return None, 0.0
        wait = sub.last_sent + sub.min_interval - now
        if wait > 0:
            return None, wait
        message, sub.pending = sub.pending, {}
        sub.delivered.update(message)
        sub.last_sent = now
        sub.wakeups += 1
        return message, 0.0

    def restore(self, sub: Subscriber, message: dict[str, int]) -> None:
        """A wake-up taken but not sent after all: owed again (newer indices win)."""
        for sensor, index in message.items():
            if sensor in sub.sensors:
                sub.pending.setdefault(sensor, index)
        sub.wakeups -= 1

    def views_for(self, peer: PeerCred) -> list[dict[str, object]]:
        """The subscribers ``peer`` may see in stats: its own (root: everyone's) that hold a
        subscription."""
        return [
            sub.view()
            for sub in self.subscribers.values()
            if sub.sensors and (peer.uid == 0 or sub.peer.uid == peer.uid)
        ]

    def drop_sensor(self, sensor: str) -> list[Subscriber]:
        """A sensor went away (an external writer left): who was subscribed to it."""
        subs = list(self.by_sensor.pop(sensor, ()))
        self.fastest.pop(sensor, None)
        self.futex_waiters.pop(sensor, None)
        self.socket_fastest.pop(sensor, None)
        for sub in subs:
            sub.sensors.discard(sensor)
            sub.futex.discard(sensor)
            sub.intervals.pop(sensor, None)
            self._pace(sub)
            sub.pending.pop(sensor, None)
            sub.delivered.pop(sensor, None)
        return subs


# -- read policy ------------------------------------------------------------------------------


class ReadPolicy:
    """sensor glob -> principals (:mod:`libkiki.principals`, parsed here, once: names are
    resolved when the configuration is read, and groups are the peer's at connect, primary and
    supplementary); the first glob that matches a sensor decides. A principal that does not
    parse is logged and matches nobody (the configuration is read before this, by pydantic)."""

    def __init__(self, rules: Mapping[str, list[str]]) -> None:
        self.rules = [
            (glob, parse_principals(principals, f"read_policy[{glob!r}]"))
            for glob, principals in rules.items()
        ]

    def open_to_all(self, sensor: str) -> bool:
        """Whether anyone who can connect may read ``sensor`` (its ring may then be group-read)."""
        for glob, principals in self.rules:
            if fnmatch.fnmatchcase(sensor, glob):
                return principals.anyone
        return False

    def allows(self, peer: PeerCred, sensor: str) -> bool:
        if peer.uid == 0:
            return True
        for glob, principals in self.rules:
            if fnmatch.fnmatchcase(sensor, glob):
                return principals.matches(peer)
        return False


def parse_principals(texts: list[str], where: str) -> Principals:
    """``texts`` parsed once, at load; one that does not parse is logged and matches nobody."""
    parsed = []
    for text in texts:
        try:
            parsed.append(Principal.parse(text, where))
        except ConfigError as exc:
            log.warning("%s: it matches nobody", exc)
    return Principals(tuple(parsed))


def subscribe_params(
    sensors: object, max_wakeups: object, wake: object
) -> tuple[list[str], float | None, bool]:
    """``sensors/subscribe``'s parameters checked: (sensor ids, wake-ups per second or None for
    every sample, whether through the futex)."""
    if not isinstance(sensors, list) or not all(isinstance(s, str) for s in sensors):
        raise InvalidParams("sensors is a list of sensor ids")
    if not isinstance(max_wakeups, int | float) or max_wakeups < 0:
        raise InvalidParams("maxWakeupsPerSecond is a number >= 0 (0: every sample)")
    if wake not in ("socket", "futex"):
        raise InvalidParams('wake is "socket" (wake-up messages) or "futex"')
    return sensors, max_wakeups or None, wake == "futex"


def read_params(sensor: object, count: object) -> tuple[str, int]:
    """``sensors/read``'s (and the read tool's) parameters checked."""
    if not isinstance(sensor, str):
        raise InvalidParams("sensor is a sensor id")
    if not isinstance(count, int) or not 1 <= count <= MAX_READ:
        raise InvalidParams(f"count must be an integer in 1..{MAX_READ}")
    return sensor, count


def unknown(sensor: str) -> NotFound:
    return NotFound(f"no sensor {sensor!r}", data={"sensor": sensor, "error": "UnknownSensor"})
