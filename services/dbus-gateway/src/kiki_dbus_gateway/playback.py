"""One ``dev.kiki.media.subscribePlayback`` stream's backlog: what to tell, merged per player.

Sans-I/O. :class:`~kiki_dbus_gateway.media.Players` tells every feed ``(name, kind)`` as players
appear, change and go; a feed keeps at most one pending entry per player, so a player that sends
ten thousand ``PropertiesChanged`` between two reads costs its subscribers one message with the
state as it is then. The backlog is bounded by the players there are and the ones this stream
told of (a ``gone`` for a player the stream never showed is dropped).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from kiki_dbus_gateway.media import Players

NSID: Final = "dev.kiki.media.subscribePlayback"
APPEARED: Final = f"{NSID}#playerAppeared"
CHANGED: Final = f"{NSID}#playerChanged"
GONE: Final = f"{NSID}#playerGone"


class PlaybackFeed:
    def __init__(self, players: Players, on_pending: Callable[[], None]) -> None:
        self.players = players
        self.on_pending = on_pending
        self.pending: dict[str, str] = {}
        self.told: set[str] = set()
        for player in players.listed():  # the players already there first, as appearing
            self.pending[player.name] = "appeared"

    def __call__(self, name: str, kind: str) -> None:
        before = self.pending.get(name)
        if kind == "gone":
            if name not in self.told:
                self.pending.pop(name, None)  # came and went unseen: nothing to say
                return
            self.pending[name] = "gone"
        elif kind == "appeared" or before in ("appeared", "gone") or name not in self.told:
            self.pending[name] = "appeared"
        else:
            self.pending[name] = "changed"
        self.on_pending()

    def take(self, now: float) -> list[dict[str, Any]]:
        """The messages for the backlog, in the order the players first had news; emptied."""
        pending, self.pending = self.pending, {}
        messages: list[dict[str, Any]] = []
        for name, kind in pending.items():
            player = self.players.by_name.get(name)
            if kind == "gone" or player is None or not player.ready:
                if name in self.told:
                    self.told.discard(name)
                    messages.append({"$type": GONE, "player": name})
                continue
            self.told.add(name)
            kind_type = APPEARED if kind == "appeared" else CHANGED
            messages.append({"$type": kind_type, "nowPlaying": player.now_playing(now)})
        return messages
