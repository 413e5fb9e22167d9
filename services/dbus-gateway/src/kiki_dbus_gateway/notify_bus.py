"""asyncio glue for notifications: calls to ``org.freedesktop.Notifications``, its signals, and
a second connection that monitors other apps' ``Notify`` calls.

The gateway's main connection adds match rules for ``ActionInvoked`` and
``NotificationClosed`` and accepts them only from the connection that owns the server's name
now (another process cannot fake an event for the agent's notification). A name with no owner
is ``NoServer`` (:class:`~libkiki.errors.Unavailable`, data ``{"error": "NoServer"}``).

The monitor is a connection of its own (a monitor may send nothing once it is one):
``BecomeMonitor`` with a match on ``Notify`` method calls. It handles every message it gets
itself, so dbus-fast never answers the calls it only watches. A bus that refuses to make it a
monitor (the system's policy) leaves the history empty and says so in the log; the rest works.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
from collections import Counter
from typing import Any, Final

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from kiki_dbus_gateway.dbus_calls import BUS, BUS_PATH, WellKnownName, bus_call, bus_method
from kiki_dbus_gateway.notify import NAME, PATH, Notifications, observed
from libkiki.errors import KikiError, PeerGone, Unavailable

log = logging.getLogger(__name__)

MATCHES: Final = (
    f"type='signal',interface='{NAME}',member='ActionInvoked',path='{PATH}'",
    f"type='signal',interface='{NAME}',member='NotificationClosed',path='{PATH}'",
)
MONITOR_MATCH: Final = f"type='method_call',interface='{NAME}',member='Notify'"


class NotifyBus:
    def __init__(
        self,
        bus: MessageBus,
        state: Notifications,
        timeout: float,
        counters: Counter[str],
    ) -> None:
        self.bus = bus
        self.state = state
        self.timeout = timeout
        self.counters = counters
        # Who owns the server's name: calls go to it, and its signals are the only ones taken.
        self.server = WellKnownName(bus, NAME, timeout, no_server)
        self.monitor: MessageBus | None = None

    async def start(self, *, monitor: bool) -> None:
        self.bus.add_message_handler(self._on_message)
        await self.server.start()
        for rule in MATCHES:
            await bus_method(self.bus, "AddMatch", "s", [rule], self.timeout)
        if monitor:
            await self._start_monitor()

    async def stop(self) -> None:
        self.bus.remove_message_handler(self._on_message)
        self.server.stop()
        if self.monitor is not None:
            self.monitor.disconnect()
            with contextlib.suppress(EOFError, OSError):
                await self.monitor.wait_for_disconnect()  # type: ignore[no-untyped-call]
            self.monitor = None

    async def call(
        self, member: str, signature: str = "", body: list[Any] | None = None
    ) -> list[Any]:
        owner = await self.server.resolve()
        message = Message(
            destination=owner,
            path=PATH,
            interface=NAME,
            member=member,
            signature=signature,
            body=body or [],
        )
        try:
            return await bus_call(self.bus, message, self.timeout, "the notification server")
        except PeerGone:
            self.server.forget(owner)
            raise

    def _on_message(self, msg: Message) -> bool:
        if (
            msg.message_type != MessageType.SIGNAL
            or msg.interface != NAME
            or msg.path != PATH
            or msg.sender is None
            or msg.sender != self.server.owner
        ):
            return False
        try:
            if msg.member == "ActionInvoked" and msg.signature == "us":
                self.state.action_invoked(msg.body)
            elif msg.member == "NotificationClosed" and msg.signature == "uu":
                self.state.closed(msg.body)
        except (TypeError, ValueError):
            self.counters["bad_signals"] += 1
        return False

    async def _start_monitor(self) -> None:
        monitor = await MessageBus(bus_type=BusType.SESSION).connect()
        try:
            await bus_call(
                monitor,
                Message(
                    destination=BUS,
                    path=BUS_PATH,
                    interface="org.freedesktop.DBus.Monitoring",
                    member="BecomeMonitor",
                    signature="asu",
                    body=[[MONITOR_MATCH], 0],
                ),
                self.timeout,
                "the bus",
            )
        except KikiError as exc:
            log.warning("cannot watch other apps' notifications: %s", exc)
            monitor.disconnect()
            return
        monitor.add_message_handler(self._on_monitored)
        self.monitor = monitor

    def _on_monitored(self, msg: Message) -> bool:
        # Every message is ours to drop: a monitor never answers the calls it sees.
        if (
            msg.message_type == MessageType.METHOD_CALL
            and msg.member == "Notify"
            and msg.sender != self.bus.unique_name  # the agent's own are not others'
        ):
            record = observed(list(msg.body), datetime.datetime.now(datetime.UTC))
            if record is None:
                self.counters["bad_notifications"] += 1
            else:
                self.counters["notifications_observed"] += 1
                self.state.seen(record)
        return True


def no_server() -> Unavailable:
    return Unavailable("no notification server is running", data={"error": "NoServer"})
