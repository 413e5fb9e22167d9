"""Who hears that the tool list changed, and who is still owed the news: pure state, no I/O.

Two audiences get ``notifications/tools/list_changed``: connections that did the handshake
(``initialize``), and 2026-07-28 ``subscriptions/listen`` streams that asked for it. A listener
that is not reading is never waited for: it is *owed* one notification, which stands for any
number of changes, until the server manages to send it (:meth:`Audience.told`) or the listener
stops listening. Connections are opaque keys here; the server holds the sockets.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Generic, TypeVar

from kiki_tool_broker import protocol as mcp
from libkiki.errors import InvalidParams, LimitExceeded

C = TypeVar("C", bound=Hashable)  # a connection


class Audience(Generic[C]):
    def __init__(self, max_streams: int) -> None:
        self.max_streams = max_streams
        # Connections that did the initialize handshake.
        self.watchers: set[C] = set()
        # Open listen streams, (connection, request id) -> whether it wants list_changed.
        self.streams: dict[tuple[C, Any], bool] = {}
        # (connection, listen request id), or (connection, None) for a handshake.
        self.owed: set[tuple[C, Any]] = set()

    def watch(self, conn: C) -> None:
        self.watchers.add(conn)

    def admit(self, notifications: object) -> dict[str, Any]:
        """The filter a new listen stream is served (what it asked for that the broker has),
        or why it may not open: its params are wrong, or too many streams are open."""
        if not isinstance(notifications, dict):
            raise InvalidParams("notifications must be an object")
        if len(self.streams) >= self.max_streams:
            raise LimitExceeded(
                f"too many listen streams (limit {self.max_streams})",
                data={"limit": self.max_streams},
            )
        return mcp.honored(notifications)

    def open(self, stream: tuple[C, Any], honored: dict[str, Any]) -> None:
        self.streams[stream] = bool(honored)

    def close(self, stream: tuple[C, Any]) -> None:
        self.streams.pop(stream, None)

    def listening(self, conn: C) -> int:
        """How many listen streams ``conn`` has open."""
        return sum(1 for c, _ in self.streams if c == conn)

    def forget(self, conn: C) -> None:
        """``conn`` closed: it listens no more, in any way."""
        self.watchers.discard(conn)
        for stream in [s for s in self.streams if s[0] == conn]:
            del self.streams[stream]

    def changed(self) -> None:
        """The list changed: every listener is owed a notification (once, however often)."""
        self.owed.update((conn, None) for conn in self.watchers)
        self.owed.update(stream for stream, wanted in self.streams.items() if wanted)

    def due(self) -> list[tuple[C, Any]]:
        """The owed listeners still listening, to send to now; the others owe nothing more."""
        due = []
        for target in list(self.owed):
            conn, subscription = target
            if (conn in self.watchers) if subscription is None else self.streams.get(target):
                due.append(target)
            else:
                self.owed.discard(target)
        return due

    def told(self, target: tuple[C, Any]) -> None:
        self.owed.discard(target)
