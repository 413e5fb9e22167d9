"""The AT-SPI calls the bridge makes, as plain D-Bus messages over dbus-fast.

No introspection and no proxies: every call is one ``Message`` with the member and signature
spelled out, and every answer is checked for an error. Each call is bounded by ``timeout`` (an
app that does not answer is :class:`~libkiki.errors.Timeout`); an AT-SPI error answer is
:class:`AtspiError` with D-Bus's error name and text.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from kiki_a11y_server.atspi.actions import Call
from kiki_a11y_server.atspi.model import MAX_TEXT, Fetched, text_valued
from libkiki.errors import Timeout, ToolError

ATSPI = "org.a11y.atspi."
ACCESSIBLE = ATSPI + "Accessible"
PROPERTIES = "org.freedesktop.DBus.Properties"
REGISTRY = "org.a11y.atspi.Registry"
DESKTOP = "/org/a11y/atspi/accessible/root"
ROOT = "/org/a11y/atspi/accessible/root"
NULL_PATH = "/org/a11y/atspi/null"
CACHE = "/org/a11y/atspi/cache"

# The events the bridge listens to (``RegisterEvent``: atk-bridge only emits those that some
# listener registered) and the D-Bus interfaces they arrive on.
EVENTS = (
    "object:bounds-changed",
    "object:children-changed",
    "object:property-change",
    "object:state-changed",
    "object:text-changed",
    "object:value-changed",
    "focus:",
    "window:",
)
EVENT_INTERFACES = (ATSPI + "Event.Object", ATSPI + "Event.Focus", ATSPI + "Event.Window")


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

    async def _props(
        self, dest: str, path: str, iface: str, names: tuple[str, ...]
    ) -> dict[str, Any]:
        """Properties one ``Get`` each (those that fail are left out). Not ``GetAll``: an app
        can abort inside libdbus building that answer (Chromium 156 does, asked for ``Value``'s
        properties of its toolbar buttons)."""
        answers = await asyncio.gather(
            *(self._maybe(dest, path, PROPERTIES, "Get", "ss", [iface, name]) for name in names)
        )
        return {name: got[0] for name, got in zip(names, answers, strict=True) if got}

    async def _action_names(self, dest: str, path: str) -> tuple[str, ...]:
        """The actions' own names (``GetName``: "click", "press"; ``GetActions`` answers the
        localized ones, which depend on the app's language and which Chromium leaves empty)."""
        count = await self._maybe(dest, path, ATSPI + "Action", "GetActions")
        if not count:
            return ()
        names = await asyncio.gather(
            *(
                self._maybe(dest, path, ATSPI + "Action", "GetName", "i", [i])
                for i in range(min(len(count[0]), 32))
            )
        )
        return tuple(str(n[0]) if n else "" for n in names)

    async def parent(self, dest: str, path: str) -> str:
        """The accessible's parent on the same connection ("" if none or elsewhere)."""
        got = await self._props(dest, path, ACCESSIBLE, ("Parent",))
        if "Parent" not in got:
            return ""
        name, parent = got["Parent"].value
        return str(parent) if name == dest and parent != NULL_PATH else ""

    async def name(self, dest: str, path: str) -> str:
        """The accessible's name ("" if it has none or does not say): one call, sent as soon
        as this runs (an app answers in the order it is asked)."""
        got = await self._maybe(dest, path, PROPERTIES, "Get", "ss", [ACCESSIBLE, "Name"])
        return str(got[0].value) if got else ""

    async def extents(self, dest: str, path: str) -> tuple[int, int, int, int] | None:
        """``Component.GetExtents`` in screen coordinates (None: the object has no Component)."""
        got = await self._maybe(dest, path, ATSPI + "Component", "GetExtents", "u", [0])
        return tuple(got[0]) if got else None

    async def bus_call(self, member: str, name: str) -> int:
        """One of the bus daemon's answers about connection ``name`` (a ``u``)."""
        reply = await self._call(
            "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", member,
            "s", [name],
        )  # fmt: skip
        return int(reply[0])

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
        then a second for the interfaces the first named (bounds, actions, value, text)."""
        values, role, state, interfaces, children = await asyncio.gather(
            self._props(dest, path, ACCESSIBLE, ("Name", "Description")),
            self._call(dest, path, ACCESSIBLE, "GetRole"),
            self._call(dest, path, ACCESSIBLE, "GetState"),
            self._call(dest, path, ACCESSIBLE, "GetInterfaces"),
            self._call(dest, path, ACCESSIBLE, "GetChildren"),
        )
        first = Fetched(
            path=path,
            role=int(role[0]),
            name=str(values["Name"].value) if "Name" in values else "",
            description=str(values["Description"].value) if "Description" in values else "",
            states=tuple(state[0]),
            children=self.own_children(dest, children[0]),
            interfaces=frozenset(i.removeprefix(ATSPI) for i in interfaces[0]),
        )
        return await self.complete(dest, first)

    @staticmethod
    def own_children(dest: str, refs: list[tuple[str, str]]) -> tuple[str, ...]:
        """Children on the app's own connection (a plug into another process is left out)."""
        return tuple(p for name, p in refs if name == dest and p != NULL_PATH)

    async def children(self, dest: str, path: str) -> tuple[str, ...]:
        reply = await self._call(dest, path, ACCESSIBLE, "GetChildren")
        return self.own_children(dest, reply[0])

    async def cache_items(self, dest: str) -> list[Any] | None:
        """``Cache.GetItems`` (every accessible the app's bridge holds, with role, name,
        states, interfaces and parent in one answer), or None where the app does not offer it."""
        reply = await self._maybe(dest, CACHE, ATSPI + "Cache", "GetItems")
        return list(reply[0]) if reply else None

    async def refresh(self, dest: str, known: Fetched, aspects: set[str]) -> Fetched:
        """An accessible already mirrored, in one round: only what its events said changed
        (``model.ASPECTS``; ``all``: name, role, states and children asked together with the
        calls its known interfaces need)."""
        path = known.path
        every = "all" in aspects
        asked: dict[str, Any] = {}
        if every or "name" in aspects:
            asked["props"] = self._props(dest, path, ACCESSIBLE, ("Name", "Description"))
        if every:
            asked["role"] = self._call(dest, path, ACCESSIBLE, "GetRole")
        if every or "state" in aspects:
            asked["state"] = self._call(dest, path, ACCESSIBLE, "GetState")
        if every or "children" in aspects:
            asked["children"] = self._call(dest, path, ACCESSIBLE, "GetChildren")
        if every or "value" in aspects:
            asked["complete"] = self.complete(dest, known, bounds=every, actions=every)
        if not every and "bounds" in aspects and "Component" in known.interfaces:
            asked["extents"] = self.extents(dest, path)
        answers = dict(zip(asked, await asyncio.gather(*asked.values()), strict=True))
        f: Fetched = answers.get("complete", known)
        changes: dict[str, Any] = {}
        if "props" in answers:
            values = answers["props"]
            changes["name"] = str(values["Name"].value) if "Name" in values else ""
            changes["description"] = (
                str(values["Description"].value) if "Description" in values else ""
            )
        if "role" in answers:
            changes["role"] = int(answers["role"][0])
        if "state" in answers:
            changes["states"] = tuple(answers["state"][0])
        if "children" in answers:
            changes["children"] = self.own_children(dest, answers["children"][0])
        if "extents" in answers:
            changes["extents"] = answers["extents"]
        refreshed: Fetched = dataclasses.replace(f, **changes)
        return refreshed

    async def complete(
        self, dest: str, f: Fetched, *, bounds: bool = True, actions: bool = True
    ) -> Fetched:
        """The calls that depend on the interfaces: bounds, actions, value, text (bounds and
        actions only if asked; else kept as ``f`` has them)."""
        ifaces, path = f.interfaces, f.path
        if not bounds or not actions:
            ifaces = ifaces - {"Component"} if not bounds else ifaces
            ifaces = ifaces - {"Action"} if not actions else ifaces
        wanted: list[Any] = []
        if "Component" in ifaces:
            wanted.append(self._maybe(dest, path, ATSPI + "Component", "GetExtents", "u", [0]))
        if "Action" in ifaces:
            wanted.append(self._action_names(dest, path))
        if "Value" in ifaces:
            wanted.append(
                self._props(dest, path, ATSPI + "Value", ("CurrentValue", "MinimumIncrement"))
            )
        text = text_valued(f)
        if text:
            wanted.append(self._maybe(dest, path, ATSPI + "Text", "GetText", "ii", [0, MAX_TEXT]))
        answers = list(await asyncio.gather(*wanted))
        extents = f.extents if not bounds else None
        names_: tuple[str, ...] = f.actions if not actions else ()
        value, numeric, increment = "", None, 0.0
        if "Component" in ifaces and (got := answers.pop(0)):
            extents = tuple(got[0])
        if "Action" in ifaces:
            names_ = answers.pop(0)
        if "Value" in ifaces and (v := answers.pop(0)):
            numeric = float(v["CurrentValue"].value) if "CurrentValue" in v else None
            increment = float(v["MinimumIncrement"].value) if "MinimumIncrement" in v else 0.0
            value = f"{numeric:g}" if numeric is not None else ""
        if text and (got := answers.pop(0)):
            value = str(got[0])
        return dataclasses.replace(
            f,
            extents=extents,
            actions=names_,
            value=value,
            numeric=numeric,
            increment=increment,
        )

    async def perform(self, dest: str, planned: tuple[Call, ...]) -> str:
        """Make the calls an action planned, in order; returns what AT-SPI answered to each,
        as words. An error answer, or ``false``, stops there and is the action's error."""
        said: list[str] = []
        for call_ in planned:
            body = list(call_.body)
            if call_.member == "Set":
                body[2] = Variant("d", float(body[2]))  # type: ignore[arg-type]
            reply = await self._call(
                call_.destination or dest,
                call_.path,
                call_.interface,
                call_.member,
                call_.signature,
                body,
            )
            answer = reply[0] if reply else None
            if answer is False:
                raise AtspiError("; ".join([*said, f"{call_.what}: AT-SPI answered false"]))
            said.append(
                f"{call_.what}: "
                + (
                    "done"
                    if answer is None
                    else f"AT-SPI answered {answer!r}".replace("True", "true")
                )
            )
        return "; ".join(said)
