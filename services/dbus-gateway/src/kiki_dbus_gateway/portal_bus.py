"""asyncio glue for xdg-desktop-portal on the session bus.

Each call goes to ``org.freedesktop.portal.Desktop`` with the gateway's deadline. No portal on
the bus is ``Unavailable`` with ``data.error`` ``NoPortal``; a portal without the interface (no
backend provides it: Settings and OpenURI need one) is ``Unavailable`` with ``NoBackend``.
Methods that answer with a Request handle go through :meth:`PortalBus.request`: the match on
``Response`` is added before the call (the path is predicted from the ``handle_token``), the
answer waited for within ``request_timeout`` (a person may be choosing), the match removed.
Calls go to the portal's unique name (resolved and followed through ``NameOwnerChanged``; an
answer from anyone else is refused), and ``SettingChanged``, ``LowMemoryWarning`` and
``Response`` are taken from that connection only.

A call that passes file descriptors (``Trash.TrashFile``) goes on a connection of its own that
negotiates them, opened at the first such call (``fd_bus``): the gateway's main connection does
not, so that dbus-fast reads each message on it with one ``recv`` (with fds it reads a header,
the rest and an ``EAGAIN`` with three ``recvmsg``, on every reply of every media call). A bus
that does not complete that connection within the call's deadline is ``Timeout``; the next
such call connects again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Final

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError

from kiki_dbus_gateway.dbus_calls import WellKnownName, bus_call, bus_method
from kiki_dbus_gateway.portal import (
    IFACE,
    MEMORY_EVENT,
    PORTAL,
    PORTAL_PATH,
    RESPONSES,
    new_token,
    request_path,
    setting_changed,
)
from libkiki.errors import Cancelled, Conflict, KikiError, PeerGone, Timeout, Unavailable

SIGNALS: Final = (
    f"type='signal',sender='{PORTAL}',interface='{IFACE}Settings',member='SettingChanged'",
    f"type='signal',sender='{PORTAL}',interface='{IFACE}MemoryMonitor',member='LowMemoryWarning'",
)


class PortalBus:
    def __init__(
        self,
        bus: MessageBus,
        timeout: float,
        request_timeout: float,
        counters: Counter[str],
        fd_bus: Callable[[], Awaitable[MessageBus]] | None = None,
    ) -> None:
        self.bus = bus
        # Connects a connection that negotiates unix fds, for the calls that pass some; None:
        # they go on ``bus`` (which must negotiate them then).
        self._connect_fd_bus = fd_bus
        self._fd_bus: MessageBus | None = None
        self._fd_bus_lock = asyncio.Lock()
        self.timeout = timeout
        self.request_timeout = request_timeout
        self.counters = counters
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._responses: dict[str, asyncio.Future[list[Any]]] = {}
        # The portal's unique name: calls go to it, its signals are the only ones taken (a
        # signal sent to the gateway directly bypasses the match rules' sender).
        self.portal = WellKnownName(bus, PORTAL, timeout, no_portal)

    async def start(self) -> None:
        self.bus.add_message_handler(self._on_message)
        await self.portal.start()
        for rule in SIGNALS:
            await bus_method(self.bus, "AddMatch", "s", [rule], self.timeout)

    def stop(self) -> None:
        self.bus.remove_message_handler(self._on_message)
        self.portal.stop()
        if self._fd_bus is not None:
            self._fd_bus.disconnect()
            self._fd_bus = None

    async def _bus_for(self, unix_fds: list[int] | None) -> MessageBus:
        """The connection a call goes on: the one that negotiates fds for a call passing some."""
        if not unix_fds or self._connect_fd_bus is None:
            return self.bus
        # One deadline for waiting behind another call's connect and for connecting: a bus
        # that stalls in authentication or Hello fails each call at its deadline (dbus-fast
        # closes the half-open socket when cancelled) and the next call tries again.
        try:
            async with asyncio.timeout(self.timeout), self._fd_bus_lock:
                if self._fd_bus is None or not self._fd_bus.connected:
                    try:
                        self._fd_bus = await self._connect_fd_bus()
                    except (OSError, DBusError, EOFError) as exc:
                        raise Unavailable(f"cannot connect to the session bus: {exc}") from None
                return self._fd_bus
        except TimeoutError:
            raise Timeout(
                f"the session bus did not accept a connection within {self.timeout:g}s",
                data={"error": "Timeout"},
            ) from None

    async def call(
        self,
        interface: str,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
        unix_fds: list[int] | None = None,
    ) -> list[Any]:
        owner = await self.portal.resolve()
        message = Message(
            destination=owner,
            path=PORTAL_PATH,
            interface=interface,
            member=member,
            signature=signature,
            body=body or [],
            unix_fds=unix_fds or [],
        )
        bus = await self._bus_for(unix_fds)
        try:
            return await bus_call(bus, message, self.timeout, "xdg-desktop-portal")
        except PeerGone:
            self.portal.forget(owner)
            raise no_portal() from None
        except Conflict as exc:
            raise Unavailable(
                f"the portal has no {interface.removeprefix(IFACE)} here (no backend provides it)",
                data={"error": "NoBackend"},
            ) from exc

    async def get_property(self, interface: str, name: str) -> Any:
        (value,) = await self.call(
            "org.freedesktop.DBus.Properties", "Get", "ss", [interface, name]
        )
        return value.value if isinstance(value, Variant) else value

    async def request(
        self,
        interface: str,
        member: str,
        signature: str,
        body: list[Any],
        options: dict[str, Variant],
    ) -> tuple[str, dict[str, Any]]:
        """A Request-handle call: ``(outcome, results)``; ``success`` or a typed error."""
        assert self.bus.unique_name is not None
        token = new_token()
        path = request_path(self.bus.unique_name, token)
        rule = (
            f"type='signal',sender='{PORTAL}',interface='{IFACE}Request',"
            f"member='Response',path='{path}'"
        )
        await bus_method(self.bus, "AddMatch", "s", [rule], self.timeout)
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._responses[path] = future
        try:
            options = {**options, "handle_token": Variant("s", token)}
            (handle,) = await self.call(interface, member, signature, [*body, options])
            if handle != path:  # an older portal: its own path (the answer may race it)
                self._responses[handle] = future
            try:
                async with asyncio.timeout(self.request_timeout):
                    code, results = await future
            except TimeoutError:
                raise Timeout(
                    f"the portal's {member} got no answer within {self.request_timeout:g}s",
                    data={"error": "Timeout"},
                ) from None
        finally:
            self._responses = {p: f for p, f in self._responses.items() if f is not future}
            with contextlib.suppress(KikiError):
                await bus_method(self.bus, "RemoveMatch", "s", [rule], self.timeout)
        outcome = RESPONSES.get(code, "ended")
        if outcome == "cancelled":
            raise Cancelled(f"{member} was cancelled by the user", data={"error": "Cancelled"})
        if outcome != "success":
            raise Unavailable(f"the portal ended {member} (code {code})", data={"error": "Failed"})
        return outcome, results if isinstance(results, dict) else {}

    def _on_message(self, msg: Message) -> bool:
        if (
            msg.message_type != MessageType.SIGNAL
            or msg.sender is None
            or msg.sender != self.portal.owner
        ):
            return False
        if msg.member == "Response" and msg.interface == f"{IFACE}Request":
            future = self._responses.get(msg.path or "")
            if future is not None and not future.done() and msg.signature == "ua{sv}":
                future.set_result(list(msg.body))
            return False
        if msg.member == "SettingChanged" and msg.interface == f"{IFACE}Settings":
            event = setting_changed(list(msg.body)) if msg.signature == "ssv" else None
        elif msg.member == "LowMemoryWarning" and msg.interface == f"{IFACE}MemoryMonitor":
            ok = msg.signature == "y"
            event = {"$type": MEMORY_EVENT, "level": msg.body[0]} if ok else None
        else:
            return False
        if event is None:
            self.counters["bad_signals"] += 1
        else:
            for listener in list(self.listeners):
                listener(event)
        return False


def no_portal() -> Unavailable:
    return Unavailable(
        "xdg-desktop-portal is not running on the session bus", data={"error": "NoPortal"}
    )
