"""Desktop notifications as values: a ``Notify`` call from the lexicon's input, the agent's own
notifications and their events, and what other apps notify (a bounded history).

Sans-I/O: the bus glue (:mod:`kiki_dbus_gateway.notify_bus`) makes the calls and feeds in the
signals and the monitored ``Notify`` calls.

*Own notifications.* The ids the server gave the gateway's ``Notify`` calls are remembered
(the last ``MAX_OWN``); ``ActionInvoked`` and ``NotificationClosed`` for any other id are
another app's business and never reach the agent's stream.

*Others' notifications* are private data. :func:`may_read` is the rule: the session's own user
(the uid the gateway runs as: the session's agent) and the principals of ``notify_readers``
may read the history; a call the broker forwards on behalf of someone else (a D-Bus caller
through ``dev.kiki.Tools1``, a remote person) may not, whatever its uid.
"""

from __future__ import annotations

import datetime
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, Final

from dbus_fast import Variant

from libkiki.peer import PeerCred
from libkiki.principals import Principals

NAME: Final = "org.freedesktop.Notifications"
PATH: Final = "/org/freedesktop/Notifications"
MAX_OWN: Final = 1024
URGENCIES: Final = ("low", "normal", "critical")
REASONS: Final = {1: "expired", 2: "dismissed", 3: "closed"}
EVENTS: Final = "dev.kiki.notify.subscribeEvents"
OBSERVED: Final = "dev.kiki.notify.subscribeObserved"


def notify_args(args: dict[str, Any], app_name: str) -> list[Any]:
    """The body of ``Notify(susssasa{sv}i)`` for the lexicon's input."""
    actions: list[str] = []
    for action in args.get("actions") or []:
        actions += [str(action["key"]), str(action["label"])]
    hints: dict[str, Variant] = {}
    if "urgency" in args:
        hints["urgency"] = Variant("y", URGENCIES.index(args["urgency"]))
    return [
        str(args.get("appName") or app_name),
        int(args.get("replacesId") or 0),
        str(args.get("icon") or ""),
        str(args["summary"]),
        str(args.get("body") or ""),
        actions,
        hints,
        int(args.get("expireTimeoutMs", -1)),
    ]


def _cut(value: Any, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def observed(body: list[Any], now: datetime.datetime) -> dict[str, Any] | None:
    """The lexicon's ``observed`` for a monitored ``Notify`` call's body (None: not one)."""
    if len(body) != 8:
        return None
    app, replaces, icon, summary, text, actions, hints, _expire = body
    if not isinstance(app, str) or not isinstance(summary, str):
        return None
    record: dict[str, Any] = {
        "appName": app[:256],
        "summary": summary[:1024],
        "at": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    if (cut := _cut(text, 4096)) is not None and cut:
        record["body"] = cut
    if (cut := _cut(icon, 1024)) is not None and cut:
        record["icon"] = cut
    if isinstance(replaces, int) and replaces > 0:
        record["replacesId"] = replaces
    if isinstance(actions, list) and all(isinstance(a, str) for a in actions):
        pairs = list(zip(actions[::2], actions[1::2], strict=False))[:16]
        if pairs:
            record["actions"] = [{"key": k[:128], "label": v[:64]} for k, v in pairs]
    urgency = hints.get("urgency") if isinstance(hints, dict) else None
    if isinstance(urgency, Variant) and urgency.signature == "y" and urgency.value < 3:
        record["urgency"] = URGENCIES[urgency.value]
    return record


def may_read(cred: PeerCred | None, delegated: bool, own_uid: int, readers: Principals) -> bool:
    if cred is None or delegated:
        return False
    return cred.uid == own_uid or readers.matches(cred)


class Notifications:
    """The agent's own ids, the listeners of their events, and others' recent notifications."""

    def __init__(self, history: int) -> None:
        self.own: OrderedDict[int, None] = OrderedDict()
        self.history: deque[dict[str, Any]] = deque(maxlen=history)
        self.event_listeners: list[Callable[[dict[str, Any]], None]] = []
        self.observed_listeners: list[Callable[[dict[str, Any]], None]] = []
        # Signals about ids not (yet) known as ours, numbered in arrival order: the server may
        # close a notification before the gateway has read its id from Notify's answer.
        self.early: deque[tuple[int, str, list[Any]]] = deque(maxlen=64)
        self._arrived = 0

    def sending(self) -> int:
        """Mark the start of a ``Notify`` call: pass the mark to :meth:`sent`."""
        return self._arrived

    def sent(self, notification_id: int, since: int | None) -> None:
        """``Notify`` answered ``notification_id``; ``since`` is the call's :meth:`sending`
        mark. Only the signals about that id that arrived while the call was in flight are
        the agent's (an earlier one is about another app's notification that had the id), and
        none when the call replaced a notification (``since`` None): the id is an old one."""
        self.own[notification_id] = None
        self.own.move_to_end(notification_id)
        while len(self.own) > MAX_OWN:
            self.own.popitem(last=False)
        early = [e for e in self.early if e[2][0] == notification_id]
        for entry in early:
            self.early.remove(entry)
        for number, kind, body in early:
            if since is not None and number > since:
                (self.action_invoked if kind == "action" else self.closed)(body)

    def _hold(self, kind: str, body: list[Any]) -> None:
        self._arrived += 1
        self.early.append((self._arrived, kind, body))

    def _tell(self, event: dict[str, Any]) -> None:
        for listener in list(self.event_listeners):
            listener(event)

    def action_invoked(self, body: list[Any]) -> None:
        notification_id, key = body
        if notification_id not in self.own:
            self._hold("action", body)
        elif isinstance(key, str):
            self._tell(
                {"$type": f"{EVENTS}#actionInvoked", "id": notification_id, "key": key[:128]}
            )

    def closed(self, body: list[Any]) -> None:
        notification_id, reason = body
        if notification_id not in self.own:
            self._hold("closed", body)
        else:
            del self.own[notification_id]
            self._tell(
                {
                    "$type": f"{EVENTS}#closed",
                    "id": notification_id,
                    "reason": REASONS.get(reason, "undefined"),
                }
            )

    def seen(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        for listener in list(self.observed_listeners):
            listener({"$type": f"{OBSERVED}#notified", "notification": record})

    def recent(self, limit: int) -> list[dict[str, Any]]:
        return list(self.history)[-limit:]
