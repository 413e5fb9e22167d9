"""Answers and signals from the wrong connection, on a real dbus-daemon: dbus-daemon delivers a
reply to its destination whoever sends it, and a signal sent to the gateway directly whatever
its match rules say. A caller predicting the gateway's next serial answers in the bus daemon's
name; the gateway must believe no such answer, and take each service's signals from that
service's connection only."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from kiki_dbus_gateway.bus_tools import BusTools, caller_of
from kiki_dbus_gateway.dbus_calls import bus_call
from kiki_dbus_gateway.media import Players
from kiki_dbus_gateway.mpris import MprisWatcher
from kiki_dbus_gateway.notify import NAME, PATH, Notifications
from kiki_dbus_gateway.notify_bus import NotifyBus
from kiki_dbus_gateway.portal import IFACE, PORTAL, PORTAL_PATH
from kiki_dbus_gateway.portal_bus import PortalBus
from kikitest import dbus_fixtures, until
from kikitest.dbus_fixtures import Stack
from libkiki.errors import KikiError, PermissionDenied, Unavailable

pytestmark = pytest.mark.integration

gateway_stack = dbus_fixtures.gateway_stack
bare_bus = dbus_fixtures.bare_bus

FORGED_UID = 4242
ATTEMPTS = 20


async def connect(stack: Stack) -> MessageBus:
    return await MessageBus(bus_address=stack.address).connect()


@pytest.fixture
async def buses(bare_bus: Stack) -> AsyncIterator[tuple[MessageBus, MessageBus]]:
    """The gateway's connection and a hostile one."""
    gateway, hostile = await connect(bare_bus), await connect(bare_bus)
    yield gateway, hostile
    gateway.disconnect()
    hostile.disconnect()


async def last_serial(hostile: MessageBus, target: MessageBus) -> int:
    """The serial ``target`` sent last, as anyone on the bus can read it off a Ping's reply."""
    reply = await hostile.call(
        Message(
            destination=target.unique_name,
            path="/",
            interface="org.freedesktop.DBus.Peer",
            member="Ping",
        )
    )
    assert reply is not None
    return reply.serial


async def spray(
    hostile: MessageBus,
    target: MessageBus,
    base: int,
    call: Awaitable[Any],
    signature: str,
    body: list[Any],
) -> Any:
    """Await ``call`` while answering the next few serials of ``target`` as ``hostile``: the
    first answers are on their way before the call is sent."""
    task: asyncio.Future[Any] | None = None
    for _ in range(50):
        for serial in range(base + 1, base + 3):
            hostile.send(
                Message(
                    message_type=MessageType.METHOD_RETURN,
                    reply_serial=serial,
                    destination=target.unique_name,
                    signature=signature,
                    body=body,
                )
            )
        if task is None:
            task = asyncio.ensure_future(call)
        await asyncio.sleep(0)
        if task.done():
            break
    assert task is not None
    return await asyncio.gather(task, return_exceptions=True)


async def test_a_reply_from_another_connection_is_refused(
    buses: tuple[MessageBus, MessageBus], bare_bus: Stack
) -> None:
    gateway, hostile = buses
    silent = await connect(bare_bus)
    silent.add_message_handler(lambda m: m.message_type == MessageType.METHOD_CALL or None)
    try:
        message = Message(destination=silent.unique_name, path="/x", interface="a.b", member="C")
        call = asyncio.ensure_future(bus_call(gateway, message, 5, "the peer"))
        await until(lambda: message.serial, "the call is sent")
        await hostile.send(
            Message(
                message_type=MessageType.METHOD_RETURN,
                reply_serial=message.serial,
                destination=gateway.unique_name,
                signature="s",
                body=["FORGED"],
            )
        )
        with pytest.raises(Unavailable, match="came from"):
            await call
    finally:
        silent.disconnect()


async def test_a_forged_credentials_answer_never_reaches_the_broker(
    gateway_stack: Stack,
) -> None:
    # The real BusTools and the real broker (which trusts this process's uid as a delegate
    # and refuses remote:dbus:uid:4242 everything) on a real bus.
    gateway, hostile = await connect(gateway_stack), await connect(gateway_stack)
    tools = BusTools(
        gateway, "/test/Forge", gateway_stack.tools, max_in_flight=8, timeout=2, counters=Counter()
    )
    tools.start()
    forged = [{"UnixUserID": Variant("u", FORGED_UID), "ProcessID": Variant("u", 1)}]
    outcomes: list[Message | BaseException] = []
    try:
        for _ in range(ATTEMPTS):
            base = await last_serial(hostile, gateway)
            call = hostile.call(
                Message(
                    destination=gateway.unique_name,
                    path="/test/Forge",
                    interface="dev.kiki.Tools1",
                    member="Call",
                    signature="ss",
                    body=["dev.kiki.media.listPlayers", "{}"],
                )
            )
            (outcome,) = await spray(hostile, gateway, base, call, "a{sv}", forged)
            outcomes.append(outcome)
    finally:
        await tools.stop()
        gateway.disconnect()
        hostile.disconnect()
    seen = [(o.message_type, o.error_name, o.body) for o in outcomes if isinstance(o, Message)]
    assert len(seen) == ATTEMPTS
    # Served as the real caller, or refused as a bad answer: never decided for uid 4242.
    assert not [s for s in seen if str(FORGED_UID) in repr(s[2])], seen
    assert {s[1] for s in seen} <= {None, "dev.kiki.Error.Unavailable"}, seen


async def test_a_forged_name_owner_never_gets_the_agents_notification(
    buses: tuple[MessageBus, MessageBus],
) -> None:
    gateway, hostile = buses
    got: list[list[Any]] = []

    def fake_server(msg: Message) -> bool | None:
        if msg.message_type == MessageType.METHOD_CALL and msg.member == "Notify":
            got.append(list(msg.body))
            hostile.send(Message.new_method_return(msg, "u", [FORGED_UID]))
            return True
        return None

    hostile.add_message_handler(fake_server)
    notify = NotifyBus(gateway, Notifications(10), 2, Counter())
    await notify.start(monitor=False)
    answers: list[Any] = []
    try:
        for _ in range(ATTEMPTS):
            base = await last_serial(hostile, gateway)
            call = notify.call("Notify", "susssasa{sv}i", ["x", 0, "", "s", "b", [], {}, -1])
            (answer,) = await spray(hostile, gateway, base, call, "s", [hostile.unique_name])
            answers.append(answer)
    finally:
        await notify.stop()
    assert got == []
    assert all(isinstance(a, KikiError) for a in answers), answers
    assert notify.server.owner is None


async def test_portal_signals_come_from_the_portal_only(
    buses: tuple[MessageBus, MessageBus], bare_bus: Stack
) -> None:
    gateway, hostile = buses
    portal = PortalBus(gateway, 2, 2, Counter())
    events: list[dict[str, Any]] = []
    portal.listeners.append(events.append)
    await portal.start()
    real = await connect(bare_bus)
    try:
        await real.request_name(PORTAL)
        await until(lambda: portal.portal.owner == real.unique_name, "the portal is followed")

        def changed(value: int, destination: str | None) -> Message:
            return Message(
                message_type=MessageType.SIGNAL,
                destination=destination,
                path=PORTAL_PATH,
                interface=f"{IFACE}Settings",
                member="SettingChanged",
                signature="ssv",
                body=["org.freedesktop.appearance", "color-scheme", Variant("u", value)],
            )

        await hostile.send(changed(2, gateway.unique_name))  # straight to the gateway
        await last_serial(hostile, gateway)  # the bus has routed it
        await real.send(changed(1, None))
        await until(lambda: events, "the portal's own change arrives")
        await last_serial(real, gateway)
        assert [e["valueJson"] for e in events] == ["1"]
    finally:
        portal.stop()
        real.disconnect()


async def test_notification_signals_come_from_the_server_only(
    buses: tuple[MessageBus, MessageBus], bare_bus: Stack
) -> None:
    gateway, hostile = buses
    state = Notifications(10)
    events: list[dict[str, Any]] = []
    state.event_listeners.append(events.append)
    notify = NotifyBus(gateway, state, 2, Counter())
    await notify.start(monitor=False)
    server = await connect(bare_bus)
    try:
        await server.request_name(NAME)
        await until(lambda: notify.server.owner == server.unique_name, "the server is followed")
        state.sent(5, state.sending())

        def signal(member: str, signature: str, body: list[Any], to: str | None) -> Message:
            return Message(
                message_type=MessageType.SIGNAL,
                destination=to,
                path=PATH,
                interface=NAME,
                member=member,
                signature=signature,
                body=body,
            )

        await hostile.send(signal("ActionInvoked", "us", [5, "evil"], gateway.unique_name))
        await hostile.send(signal("NotificationClosed", "uu", [5, 2], gateway.unique_name))
        await last_serial(hostile, gateway)
        await server.send(signal("ActionInvoked", "us", [5, "default"], None))
        await server.send(signal("NotificationClosed", "uu", [5, 1], None))
        await until(lambda: len(events) >= 2, "the server's own events arrive")
        await last_serial(server, gateway)
        assert [(e["$type"].split("#")[1], e.get("key", e.get("reason"))) for e in events] == [
            ("actionInvoked", "default"),
            ("closed", "expired"),
        ]
    finally:
        await notify.stop()
        server.disconnect()


async def test_properties_changed_from_another_connection_is_ignored(
    buses: tuple[MessageBus, MessageBus], bare_bus: Stack
) -> None:
    gateway, hostile = buses
    players = Players(8)
    statuses: list[str] = []
    players.listeners.append(
        lambda name, kind: (
            statuses.append(players.by_name[name].status) if name in players.by_name else None
        )
    )
    watcher = MprisWatcher(gateway, players, 1, Counter())
    await watcher.start()
    player = await connect(bare_bus)
    try:
        await player.request_name("org.mpris.MediaPlayer2.owned")
        await until(lambda: players.listed(), "the player is listed")

        def changed(status: str, to: str | None) -> Message:
            return Message(
                message_type=MessageType.SIGNAL,
                destination=to,
                path="/org/mpris/MediaPlayer2",
                interface="org.freedesktop.DBus.Properties",
                member="PropertiesChanged",
                signature="sa{sv}as",
                body=[
                    "org.mpris.MediaPlayer2.Player",
                    {"PlaybackStatus": Variant("s", status)},
                    [],
                ],
            )

        await hostile.send(changed("Playing", gateway.unique_name))
        await last_serial(hostile, gateway)
        await player.send(changed("Paused", None))
        await until(lambda: players.listed()[0].status == "Paused", "the player's own change")
        assert "Playing" not in statuses
    finally:
        await watcher.stop()
        player.disconnect()


def test_a_caller_of_another_uid_is_refused() -> None:
    mine = {"UnixUserID": Variant("u", os.getuid()), "ProcessID": Variant("u", 7)}
    assert caller_of(mine, os.getuid()) == {
        "subject": f"dbus:uid:{os.getuid()}",
        "session": "pid:7",
    }
    with pytest.raises(PermissionDenied):
        caller_of({"UnixUserID": Variant("u", os.getuid() + 1)}, os.getuid())
