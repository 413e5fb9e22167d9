"""MPRIS players as state: what each player said, the active-player rule, the lexicon's JSON.

Sans-I/O: the bus glue (:mod:`kiki_dbus_gateway.mpris`) feeds it what players send
(``GetAll`` answers, ``PropertiesChanged``, ``Seeked``, owners coming and going) with the
monotonic time it arrived, and asks it which player a call is for. Nothing here polls: the
position is extrapolated from the last value a player gave (``GetAll``, ``Seeked``, a
``Position`` it sent) and its rate, while it plays.

Players are untrusted. A value of the wrong D-Bus type is dropped (the property stays unknown,
counted in ``counters.bad_values``), strings are cut to the lexicon's bounds, and a URL that is
not one is left out, so whatever a player sends, the answers fit ``dev.kiki.media.defs``.

**The active player** (the player a call without ``player`` is for), in order:

1. the player whose status most recently became ``Playing``, among those playing now;
2. else the player whose status most recently changed at all (the one last paused or stopped);
3. else the player seen first (the order the gateway discovered them, which at start is the bus
   names in sorted order).

A ``player`` given by name is an exact bus-name suffix (``mpv`` for ``org.mpris.MediaPlayer2.mpv``)
or, when no player has exactly that name, the instances of it (``vlc`` matches
``vlc.instance4242``), of which the rule above picks one.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from dbus_fast import Variant

from libkiki.errors import Conflict, NotFound
from libkiki.lexicon.formats import is_uri

MPRIS_PREFIX: Final = "org.mpris.MediaPlayer2."
MPRIS_PATH: Final = "/org/mpris/MediaPlayer2"
ROOT_IFACE: Final = "org.mpris.MediaPlayer2"
PLAYER_IFACE: Final = "org.mpris.MediaPlayer2.Player"

MAX_TEXT: Final = 256  # characters of a title, album, artist, identity (the lexicon's graphemes)
MAX_ARTISTS: Final = 64
MAX_TRACK_ID: Final = 1024
MAX_URL: Final = 4096
STATUSES: Final = ("Playing", "Paused", "Stopped")
LOOPS: Final = ("None", "Track", "Playlist")
CAPABILITIES: Final = ("CanControl", "CanPlay", "CanPause", "CanSeek", "CanGoNext", "CanGoPrevious")


def is_player_name(bus_name: str) -> bool:
    return bus_name.startswith(MPRIS_PREFIX) and len(bus_name) > len(MPRIS_PREFIX)


def _of(value: Any, *signatures: str) -> Any:
    """The value of a variant of one of ``signatures``, else None (a player's wrong type)."""
    if isinstance(value, Variant) and value.signature in signatures:
        return value.value
    return None


def _text(value: Any) -> str | None:
    return value[:MAX_TEXT] if isinstance(value, str) else None


def _url(value: Any) -> str | None:
    if isinstance(value, str) and len(value) <= MAX_URL and is_uri(value):
        return value
    return None


def parse_track(metadata: Any) -> tuple[dict[str, Any], int]:
    """The lexicon's ``track`` from an MPRIS ``Metadata`` dict, and how many entries of it had
    a wrong type (dropped)."""
    if not isinstance(metadata, dict):
        return {}, 1
    track: dict[str, Any] = {}
    bad = 0
    wanted: dict[str, tuple[str, tuple[str, ...], Callable[[Any], Any]]] = {
        "mpris:trackid": ("trackId", ("o", "s"), lambda v: v if len(v) <= MAX_TRACK_ID else None),
        "xesam:title": ("title", ("s",), _text),
        "xesam:album": ("album", ("s",), _text),
        "xesam:artist": ("artists", ("as",), lambda v: [a[:MAX_TEXT] for a in v[:MAX_ARTISTS]]),
        "mpris:length": ("lengthUs", ("x", "t", "i", "u"), lambda v: max(0, v)),
        "mpris:artUrl": ("artUrl", ("s",), _url),
        "xesam:url": ("url", ("s",), _url),
    }
    for key, (name, signatures, convert) in wanted.items():
        if key not in metadata:
            continue
        raw = _of(metadata[key], *signatures)
        value = convert(raw) if raw is not None else None
        if value is None:
            bad += 1
        else:
            track[name] = value
    return track, bad


@dataclass
class Player:
    """One player's state, as it last told it."""

    name: str  # the bus name's suffix
    owner: str  # its unique connection name, where calls go
    seen: int  # discovery order (the rule's last resort)
    identity: str | None = None
    status: str = "Stopped"
    track: dict[str, Any] = field(default_factory=dict)
    caps: dict[str, bool] = field(default_factory=dict)
    volume: float | None = None
    rate: float = 1.0
    loop: str | None = None
    shuffle: bool | None = None
    position_us: int = 0  # at position_at
    position_at: float = 0.0
    status_at: float | None = None  # when the status last changed (None: never, since seen)
    ready: bool = False  # its GetAll answered (or failed): shown and callable from then on
    playing_since: float | None = None

    def position(self, now: float) -> int:
        """The position extrapolated to ``now`` (microseconds), within the track's length."""
        pos = self.position_us
        if self.status == "Playing":
            pos += int((now - self.position_at) * 1e6 * self.rate)
        length = self.track.get("lengthUs")
        if isinstance(length, int) and length > 0:
            pos = min(pos, length)
        return max(0, pos)

    def _anchor(self, now: float, position_us: int | None = None) -> None:
        self.position_us = self.position(now) if position_us is None else max(0, position_us)
        self.position_at = now

    def seeked(self, position_us: int, now: float) -> None:
        self._anchor(now, position_us)

    def apply(self, props: Mapping[str, Any], now: float) -> tuple[bool, int]:
        """Properties of either MPRIS interface (GetAll's answer or PropertiesChanged's):
        whether anything the gateway shows changed, and how many values had a wrong type
        (ignored)."""
        before = self._snapshot()
        moved = False
        bad = 0
        # Position last: a new track (Metadata) restarts it at 0 and a status or rate change
        # re-anchors it, whatever order the player's dict lists them in.
        for key, variant in sorted(props.items(), key=lambda item: item[0] == "Position"):
            ok = self._apply_one(key, variant, now)
            if ok is False:
                bad += 1
            elif ok and key == "Position":
                moved = True
        return moved or self._snapshot() != before, bad

    def _snapshot(self) -> tuple[Any, ...]:
        # Insertion order is stable between two snapshots of one apply: no sort needed.
        caps = tuple(self.caps.items())
        return (
            self.identity,
            self.status,
            self.volume,
            self.rate,
            self.loop,
            self.shuffle,
            caps,
            self.track,
        )

    def _apply_one(self, key: str, variant: Any, now: float) -> bool | None:
        if key in CAPABILITIES:
            value = _of(variant, "b")
            if value is not None:
                self.caps[key] = value
            return value is not None
        match key:
            case "PlaybackStatus":
                status = _of(variant, "s")
                if status not in STATUSES:
                    return False
                if status != self.status:
                    self._anchor(now)  # the position so far, at the old status's rate
                    self.status = status
                    self.status_at = now
                    self.playing_since = now if status == "Playing" else None
                return True
            case "Metadata":
                track, bad = parse_track(_of(variant, "a{sv}"))
                if track.get("trackId") != self.track.get("trackId"):
                    self._anchor(now, 0)  # a new track starts at 0 unless Seeked says more
                self.track = track
                return bad == 0 and _of(variant, "a{sv}") is not None
            case "Position":
                pos = _of(variant, "x", "t")
                if pos is None:
                    return False
                self._anchor(now, pos)
                return True
            case "Rate":
                rate = _of(variant, "d")
                if rate is None or not 0 <= rate <= 1000:
                    return False
                self._anchor(now)
                self.rate = rate
                return True
            case "Volume":
                volume = _of(variant, "d")
                if volume is None or not math.isfinite(volume):  # NaN, inf
                    return False
                self.volume = max(0.0, volume)
                return True
            case "LoopStatus":
                loop = _of(variant, "s")
                if loop not in LOOPS:
                    return False
                self.loop = loop
                return True
            case "Shuffle":
                shuffle = _of(variant, "b")
                if shuffle is None:
                    return False
                self.shuffle = shuffle
                return True
            case "Identity":
                identity = _text(_of(variant, "s"))
                if identity is None:
                    return False
                self.identity = identity
                return True
        return None

    def describe(self, now: float) -> dict[str, Any]:
        """The lexicon's ``player``."""
        out: dict[str, Any] = {"player": self.name, "status": self.status}
        if self.identity is not None:
            out["identity"] = self.identity
        for key in CAPABILITIES:
            if key in self.caps:
                out[key[0].lower() + key[1:]] = self.caps[key]
        if self.volume is not None:
            out["volumePercent"] = min(1000, round(self.volume * 100))
        if self.loop is not None:
            out["loopStatus"] = self.loop
        if self.shuffle is not None:
            out["shuffle"] = self.shuffle
        return out

    def now_playing(self, now: float) -> dict[str, Any]:
        """The lexicon's ``nowPlaying``."""
        return {
            "player": self.describe(now),
            "track": dict(self.track),
            "positionUs": self.position(now),
        }

    def require(self, capability: str, what: str) -> None:
        """Refuse an action the player says it cannot do now (``CanGoNext`` false, …). A
        capability the player never stated is not refused: the player will say."""
        if self.caps.get("CanControl") is False or self.caps.get(capability) is False:
            said = "CanControl" if self.caps.get("CanControl") is False else capability
            raise Conflict(
                f"the player {self.name} cannot {what} now ({said} is false)",
                data={"error": "NotSupported", "capability": said},
            )


class Players:
    """Every followed player, by name and by owner; what changed, for the event feeds."""

    def __init__(self, max_players: int, counters: Counter[str] | None = None) -> None:
        self.max_players = max_players
        self.by_name: dict[str, Player] = {}
        self._order = itertools.count()
        # bad_values: values of a wrong type, ignored; players_ignored: names past max_players
        self.counters: Counter[str] = counters if counters is not None else Counter()
        # Called with (name, kind): kind "appeared", "changed" or "gone".
        self.listeners: list[Callable[[str, str], None]] = []

    def _tell(self, name: str, kind: str) -> None:
        for listener in list(self.listeners):
            listener(name, kind)

    def add(self, name: str, owner: str) -> Player | None:
        """A player's name got an owner; None when the bound is reached."""
        if name in self.by_name:
            self.remove(name)
        if len(self.by_name) >= self.max_players:
            self.counters["players_ignored"] += 1
            return None
        player = Player(name, owner, next(self._order))
        self.by_name[name] = player
        return player

    def announce(self, name: str) -> None:
        """The player's first state is known: tell the feeds it appeared."""
        player = self.by_name.get(name)
        if player is not None:
            player.ready = True
            self._tell(name, "appeared")

    def remove(self, name: str) -> None:
        if self.by_name.pop(name, None) is not None:
            self._tell(name, "gone")

    def listed(self) -> list[Player]:
        """The players whose first state is known, in the order they were seen."""
        return sorted((p for p in self.by_name.values() if p.ready), key=lambda p: p.seen)

    def owned_by(self, owner: str) -> list[Player]:
        return [p for p in self.by_name.values() if p.owner == owner]

    def update(self, player: Player, props: Mapping[str, Any], now: float) -> None:
        changed, bad = player.apply(props, now)
        self.counters["bad_values"] += bad
        if changed and player.name in self.by_name:
            self._tell(player.name, "changed")

    def seeked(self, player: Player, position_us: Any, now: float) -> None:
        if isinstance(position_us, int) and not isinstance(position_us, bool):
            player.seeked(position_us, now)
            self._tell(player.name, "changed")
        else:
            self.counters["bad_values"] += 1

    def resolve(self, name: str | None) -> Player:
        """The player a call is for (the module's rule), or NotFound (``NoPlayer``)."""
        listed = self.listed()
        if name:
            exact = self.by_name.get(name)
            if exact is not None and exact.ready:
                return exact
            candidates = [p for p in listed if p.name.startswith(name + ".")]
            if not candidates:
                raise NotFound(f"no media player {name!r} is running", data={"error": "NoPlayer"})
        else:
            candidates = listed
            if not candidates:
                raise NotFound("no media player is running", data={"error": "NoPlayer"})
        return active(candidates)


def active(players: list[Player]) -> Player:
    """The rule's pick among ``players`` (not empty)."""
    playing = [p for p in players if p.status == "Playing" and p.playing_since is not None]
    if playing:
        return max(playing, key=lambda p: (p.playing_since, -p.seen))
    changed = [p for p in players if p.status_at is not None]
    if changed:
        return max(changed, key=lambda p: (p.status_at, -p.seen))
    return min(players, key=lambda p: p.seen)
