"""The session's bridge: the accessibility bus, the registry, and one mirror per app (asyncio).

Events reach the bridge as D-Bus signals on the accessibility bus; the message handler routes
each to the mirror of the app that sent it (by its unique bus name) without awaiting anything,
so a slow app never delays the routing of another's events. The registry says when apps come
(``ChildrenChanged`` "add" on the desktop) and the bus when they go (``NameOwnerChanged``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from kiki_a11y_server.atspi.app import AppMirror, Limits
from kiki_a11y_server.atspi.calls import (
    DESKTOP,
    EVENT_INTERFACES,
    REGISTRY,
    Calls,
    call,
    get_bus_address,
)
from libkiki.errors import KikiError

log = logging.getLogger(__name__)

DBUS = "org.freedesktop.DBus"


async def accessibility_bus_address(session_address: str | None, wait: float = 5.0) -> str:
    """``AT_SPI_BUS_ADDRESS`` if set (AT-SPI's own override), else ``org.a11y.Bus`` asked on
    the session bus; there the bridge also says that an assistive technology is running
    (``org.a11y.Status.IsEnabled``), as a screen reader does: Chromium and Qt expose their
    content only then (Chromium's web pages stay out of AT-SPI otherwise)."""
    explicit = os.environ.get("AT_SPI_BUS_ADDRESS")
    if explicit:
        return explicit
    session = await MessageBus(bus_address=session_address).connect()
    try:
        address = await get_bus_address(session, wait)
        try:
            await call(
                session, "org.a11y.Bus", "/org/a11y/bus", "org.freedesktop.DBus.Properties",
                "Set", "ssv", ["org.a11y.Status", "IsEnabled", Variant("b", True)], wait=wait,
            )  # fmt: skip
        except KikiError as exc:
            log.warning("could not mark accessibility enabled: %s", exc)
        return address
    finally:
        session.disconnect()


class Bridge:
    def __init__(
        self,
        a11y_address: str,
        socket: Path | None = None,
        *,
        limits: Limits | None = None,
        call_timeout: float = 2.0,
        own_uid: int | None = None,
    ) -> None:
        self.a11y_address = a11y_address
        self.own_uid = own_uid  # whose apps it bridges (None: the process's own uid)
        self.socket = socket
        self.limits = limits or Limits()
        self.call_timeout = call_timeout
        self.mirrors: dict[str, AppMirror] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.registry_owner = ""
        self.bus: MessageBus | None = None
        self.ready = asyncio.Event()
        self.events = 0

    async def run(self) -> None:
        """Bridge every app until the accessibility bus goes away (or the task is cancelled)."""
        bus = await MessageBus(bus_address=self.a11y_address).connect()
        self.bus = bus
        calls = Calls(bus, self.call_timeout)
        try:
            bus.add_message_handler(self._on_message)
            for interface in EVENT_INTERFACES:
                await calls.add_match(f"type='signal',interface='{interface}'")
            await calls.add_match(
                f"type='signal',sender='{DBUS}',interface='{DBUS}',member='NameOwnerChanged'"
            )
            owner = await call(
                bus, DBUS, "/org/freedesktop/DBus", DBUS, "GetNameOwner", "s", [REGISTRY],
                wait=self.call_timeout,
            )  # fmt: skip
            self.registry_owner = str(owner[0])
            await calls.register_events()
            for name in await calls.apps():
                self._add(calls, name)
            self.ready.set()
            await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
        finally:
            tasks = list(self.tasks.values())  # an app leaving meanwhile changes the dict
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self.tasks.clear()
            self.mirrors.clear()
            bus.disconnect()

    def _add(self, calls: Calls, name: str) -> None:
        if name in self.mirrors or name == calls.bus.unique_name or name == self.registry_owner:
            return
        mirror = AppMirror(calls, name, self.socket, self.limits, own_uid=self.own_uid)
        self.mirrors[name] = mirror
        self.tasks[name] = asyncio.create_task(mirror.run(), name=f"atspi {name}")
        log.info("bridging %s", name)

    def _remove(self, name: str) -> None:
        self.mirrors.pop(name, None)
        task = self.tasks.pop(name, None)
        if task is not None:
            task.cancel()
            log.info("%s left", name)

    def _on_message(self, message: Message) -> bool:
        if message.message_type != MessageType.SIGNAL:
            return False
        sender, interface = message.sender, message.interface or ""
        if interface == DBUS and message.member == "NameOwnerChanged":
            name, _old, new = message.body
            if not new:
                self._remove(str(name))
            return False
        if not interface.startswith("org.a11y.atspi.Event."):
            return False
        self.events += 1
        if sender == self.registry_owner and message.path == DESKTOP:
            if message.member == "ChildrenChanged" and self.bus is not None:
                detail, any_data = message.body[0], message.body[3].value
                app = str(any_data[0])
                if detail.startswith("add"):
                    self._add(Calls(self.bus, self.call_timeout), app)
                elif detail.startswith("remove"):
                    self._remove(app)
            return False
        mirror = self.mirrors.get(sender or "")
        if mirror is not None and message.path:
            if len(message.body) >= 4:
                mirror.signal(message.path, message.member or "", message.body)
            else:
                mirror.event(message.path)
        return False
