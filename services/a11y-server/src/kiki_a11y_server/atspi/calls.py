"""The AT-SPI calls the bridge makes, as plain D-Bus messages over dbus-fast.

No introspection and no proxies: every call is one ``Message`` with the member and signature
spelled out, and every answer is checked for an error. Each call is bounded by ``timeout`` (an
app that does not answer is :class:`~libkiki.errors.Timeout`); an AT-SPI error answer is
:class:`AtspiError` with D-Bus's error name and text.
"""

from __future__ import annotations

import asyncio
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from kiki_a11y_server.atspi.model import Call, Fetched
from libkiki.errors import Timeout, ToolError

ATSPI = "org.a11y.atspi."
ACCESSIBLE = ATSPI + "Accessible"
PROPERTIES = "org.freedesktop.DBus.Properties"
REGISTRY = "org.a11y.atspi.Registry"
DESKTOP = "/org/a11y/atspi/accessible/root"
ROOT = "/org/a11y/atspi/accessible/root"
NULL_PATH = "/org/a11y/atspi/null"

# The events the bridge listens to (``RegisterEvent``: atk-bridge only emits those that some
# listener registered) and the D-Bus interfaces they arrive on.
EVENTS = (
    "object:children-changed",
    "object:property-change",
    "object:state-changed",
    "object:text-changed",
    "object:value-changed",
    "focus:",
    "window:",
)
EVENT_INTERFACES = (ATSPI + "Event.Object", ATSPI + "Event.Focus", ATSPI + "Event.Window")

# Text longer than this is cut (a terminal's scrollback, a document): the Kiki value is for the
# agent's eyes, and the a11y-server bounds what a node may hold.
MAX_TEXT = 16_384


class AtspiError(ToolError):
    """An app answered an AT-SPI call with a D-Bus error."""


async def get_bus_address(session: MessageBus, wait: float) -> str:
    """The accessibility bus's address, from ``org.a11y.Bus`` on the session bus."""
    reply = await call(
        session, "org.a11y.Bus", "/org/a11y/bus", "org.a11y.Bus", "GetAddress", wait=wait
    )
    return str(reply[0])


async def call(
    bus: MessageBus,
    destination: str,
    path: str,
    interface: str,
    member: str,
    signature: str = "",
    body: list[Any] | None = None,
    *,
    wait: float,
) -> list[Any]:
    message = Message(
        destination=destination,
        path=path,
        interface=interface,
        member=member,
        signature=signature,
        body=body or [],
    )
    try:
        async with asyncio.timeout(wait):
            reply = await bus.call(message)
    except TimeoutError:
        raise Timeout(f"{destination} did not answer {member} within {wait:g} s") from None
    assert reply is not None
    if reply.message_type == MessageType.ERROR:
        text = reply.body[0] if reply.body else ""
        raise AtspiError(f"{member}: {reply.error_name}: {text}")
    return list(reply.body)


class Calls:
    """The AT-SPI calls on one accessibility bus connection, each bounded by ``timeout``."""

    def __init__(self, bus: MessageBus, timeout: float = 2.0) -> None:
        self.bus = bus
        self.timeout = timeout

    async def _call(
        self,
        dest: str,
        path: str,
        iface: str,
        member: str,
        sig: str = "",
        body: list[Any] | None = None,
    ) -> list[Any]:
        return await call(self.bus, dest, path, iface, member, sig, body, wait=self.timeout)

    async def _maybe(
        self,
        dest: str,
        path: str,
        iface: str,
        member: str,
        sig: str = "",
        body: list[Any] | None = None,
    ) -> list[Any] | None:
        """A call whose error means "not offered" (an interface the object lacks)."""
        try:
            return await self._call(dest, path, iface, member, sig, body)
        except AtspiError:
            return None

    async def ping(self, dest: str) -> None:
        """One cheap call to the app's root: does it answer at all?"""
        await self._call(dest, ROOT, ACCESSIBLE, "GetRole")

    async def apps(self) -> list[str]:
        """The bus names of the apps the registry knows."""
        children = await self._call(REGISTRY, DESKTOP, ACCESSIBLE, "GetChildren")
        return [name for name, _ in children[0]]

    async def register_events(self) -> None:
        for event in EVENTS:
            await self._call(
                REGISTRY,
                "/org/a11y/atspi/registry",
                REGISTRY,
                "RegisterEvent",
                "sass",
                [event, [], ""],
            )

    async def add_match(self, rule: str) -> None:
        await self._call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "AddMatch",
            "s",
            [rule],
        )

    async def fetch(self, dest: str, path: str) -> Fetched:
        """Everything Kiki's node needs about one accessible: one round of calls sent together,
        then a second for the interfaces the first named (actions, value, text)."""
        props, role, state, interfaces, children, extents = await asyncio.gather(
            self._call(dest, path, PROPERTIES, "GetAll", "s", [ACCESSIBLE]),
            self._call(dest, path, ACCESSIBLE, "GetRole"),
            self._call(dest, path, ACCESSIBLE, "GetState"),
            self._call(dest, path, ACCESSIBLE, "GetInterfaces"),
            self._call(dest, path, ACCESSIBLE, "GetChildren"),
            self._maybe(dest, path, ATSPI + "Component", "GetExtents", "u", [0]),
        )
        ifaces = frozenset(i.removeprefix(ATSPI) for i in interfaces[0])
        values = props[0]
        states = tuple(state[0])
        actions, value, numeric, increment = await self._second_round(
            dest, path, ifaces, role[0], states
        )
        return Fetched(
            path=path,
            role=int(role[0]),
            name=str(values["Name"].value) if "Name" in values else "",
            description=str(values["Description"].value) if "Description" in values else "",
            states=states,
            children=tuple(p for name, p in children[0] if name == dest and p != NULL_PATH),
            interfaces=ifaces,
            extents=tuple(extents[0]) if extents else None,
            actions=actions,
            value=value,
            numeric=numeric,
            increment=increment,
        )

    async def _second_round(
        self, dest: str, path: str, ifaces: frozenset[str], role: int, states: tuple[int, ...]
    ) -> tuple[tuple[str, ...], str, float | None, float]:
        from kiki_a11y_server.atspi import roles

        wanted: list[Any] = []
        if "Action" in ifaces:
            wanted.append(self._maybe(dest, path, ATSPI + "Action", "GetActions"))
        if "Value" in ifaces:
            wanted.append(self._maybe(dest, path, PROPERTIES, "GetAll", "s", [ATSPI + "Value"]))
        names = roles.atspi_state_names(states)
        password = roles.kiki_role(role)[1] == "password text"
        text = (
            "Text" in ifaces and ("editable" in names or "EditableText" in ifaces) and not password
        )
        if text:
            wanted.append(self._maybe(dest, path, ATSPI + "Text", "GetText", "ii", [0, MAX_TEXT]))
        answers = list(await asyncio.gather(*wanted))
        actions: tuple[str, ...] = ()
        value, numeric, increment = "", None, 0.0
        if "Action" in ifaces:
            got = answers.pop(0)
            actions = tuple(str(a[0]) for a in got[0]) if got else ()
        if "Value" in ifaces:
            got = answers.pop(0)
            if got:
                v = got[0]
                numeric = float(v["CurrentValue"].value) if "CurrentValue" in v else None
                increment = float(v["MinimumIncrement"].value) if "MinimumIncrement" in v else 0.0
                value = f"{numeric:g}" if numeric is not None else ""
        if text:
            got = answers.pop(0)
            if got:
                value = str(got[0])
        return actions, value, numeric, increment

    async def perform(self, dest: str, call_: Call) -> str:
        """Make the call an action planned; returns what AT-SPI answered, as words."""
        body = list(call_.body)
        if call_.member == "Set":
            body[2] = Variant("d", float(body[2]))  # type: ignore[arg-type]
        reply = await self._call(
            dest, call_.path, call_.interface, call_.member, call_.signature, body
        )
        if call_.member == "Set":
            return f"{call_.what}: done"
        answer = reply[0] if reply else None
        if answer is False:
            raise AtspiError(f"{call_.what}: AT-SPI answered false")
        return f"{call_.what}: AT-SPI answered {answer!r}".replace("True", "true")
