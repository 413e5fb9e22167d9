"""dbus_calls.Replies on a real dbus-daemon: a call's reply matched by serial and sender in the
connection's first handler (and hidden from the others), a reply from the wrong connection
passed over for the peer's own, the bus daemon's errors taken for a peer, its deadline, the
connection ending under it, a caller cancelling."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from kiki_dbus_gateway.dbus_calls import Replies, bus_call, bus_method
from kikitest import dbus_fixtures, until
from kikitest.dbus_fixtures import Stack
from libkiki.errors import PeerGone, Timeout, Unavailable

pytestmark = pytest.mark.integration

bare_bus = dbus_fixtures.bare_bus


async def connect(stack: Stack) -> MessageBus:
    return await MessageBus(bus_address=stack.address).connect()


@pytest.fixture
async def gateway(bare_bus: Stack) -> AsyncIterator[tuple[MessageBus, Replies]]:
    bus = await connect(bare_bus)
    replies = Replies(bus)
    replies.start()
    yield bus, replies
    await replies.stop()
    bus.disconnect()


@pytest.fixture
async def silent(bare_bus: Stack) -> AsyncIterator[MessageBus]:
    """A peer that takes every call and never answers."""
    bus = await connect(bare_bus)
    bus.add_message_handler(lambda m: m.message_type == MessageType.METHOD_CALL or None)
    yield bus
    bus.disconnect()


def call_to(peer: MessageBus) -> Message:
    assert peer.unique_name is not None
    return Message(destination=peer.unique_name, path="/x", interface="a.b", member="C")


async def test_a_reply_is_taken_by_serial_and_hidden_from_the_other_handlers(
    gateway: tuple[MessageBus, Replies],
) -> None:
    bus, replies = gateway
    seen: list[Message] = []

    def record(msg: Message) -> bool:
        seen.append(msg)
        return False

    bus.add_message_handler(record)
    (name_id,) = await bus_method(bus, "GetId", "", [], 5)
    assert isinstance(name_id, str)
    assert name_id
    assert replies.waiting == 0
    assert not [m for m in seen if m.message_type is MessageType.METHOD_RETURN]
    # dbus-fast's own calls (not made through bus_call) still get their replies
    reply = await bus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="GetId",
        )
    )
    assert reply is not None
    assert reply.body == [name_id]


async def test_an_error_reply_is_the_typed_error(gateway: tuple[MessageBus, Replies]) -> None:
    bus, replies = gateway
    gone = Message(destination=":1.999999", path="/x", interface="a.b", member="C")
    with pytest.raises(PeerGone):
        await bus_call(bus, gone, 5, "the peer")
    assert replies.waiting == 0


async def test_a_peer_that_never_answers_is_a_timeout(
    gateway: tuple[MessageBus, Replies], silent: MessageBus
) -> None:
    bus, replies = gateway
    with pytest.raises(Timeout, match=r"did not answer C within 0\.2s"):
        await bus_call(bus, call_to(silent), 0.2, "the peer")
    assert replies.waiting == 0


async def test_the_connection_ending_under_a_call_is_unavailable_at_once(
    bare_bus: Stack, silent: MessageBus
) -> None:
    bus = await connect(bare_bus)
    replies = Replies(bus)
    replies.start()
    try:
        call = asyncio.ensure_future(bus_call(bus, call_to(silent), 60, "the peer"))
        await until(lambda: replies.waiting == 1, "the call is sent")
        bus.disconnect()
        with pytest.raises(Unavailable, match="the session bus connection failed"):
            await asyncio.wait_for(call, 10)
        assert replies.waiting == 0
        with pytest.raises(Unavailable, match="the session bus connection failed"):
            await bus_call(bus, call_to(silent), 60, "the peer")
    finally:
        await replies.stop()


async def test_a_cancelled_call_leaves_nothing_waiting(
    gateway: tuple[MessageBus, Replies], silent: MessageBus
) -> None:
    bus, replies = gateway
    call = asyncio.ensure_future(bus_call(bus, call_to(silent), 60, "the peer"))
    await until(lambda: replies.waiting == 1, "the call is sent")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert replies.waiting == 0


async def test_a_reply_from_another_connection_is_passed_over_for_the_peers_own(
    gateway: tuple[MessageBus, Replies], bare_bus: Stack
) -> None:
    bus, replies = gateway
    hostile, peer = await connect(bare_bus), await connect(bare_bus)
    held: list[Message] = []

    def hold(msg: Message) -> bool:
        if msg.message_type is not MessageType.METHOD_CALL:
            return False
        held.append(msg)
        return True

    peer.add_message_handler(hold)
    seen: list[Message] = []

    def record(msg: Message) -> bool:
        seen.append(msg)
        return False

    bus.add_message_handler(record)
    try:
        message = call_to(peer)
        call = asyncio.ensure_future(bus_call(bus, message, 10, "the peer"))
        await until(lambda: held, "the call reaches the peer")
        await hostile.send(
            Message(
                message_type=MessageType.METHOD_RETURN,
                reply_serial=message.serial,
                destination=bus.unique_name,
                signature="s",
                body=["FORGED"],
            )
        )
        # The gateway answers this Ping after handling what the hostile connection sent first.
        ping = Message(
            destination=bus.unique_name,
            path="/",
            interface="org.freedesktop.DBus.Peer",
            member="Ping",
        )
        assert await hostile.call(ping) is not None
        assert [m.body for m in seen if m.reply_serial == message.serial] == [["FORGED"]]
        assert not call.done()  # the forged answer did not count
        assert replies.waiting == 1
        peer.send(Message.new_method_return(held[0], "s", ["genuine"]))
        assert await call == ["genuine"]
        assert replies.waiting == 0
    finally:
        hostile.disconnect()
        peer.disconnect()


async def test_a_peer_leaving_under_a_call_is_the_bus_daemons_typed_error(
    gateway: tuple[MessageBus, Replies], bare_bus: Stack
) -> None:
    # The NoReply comes from the bus daemon, not the peer called: it is still the answer (were
    # it passed over, the call would end in a Timeout at its deadline).
    bus, replies = gateway
    peer = await connect(bare_bus)
    peer.add_message_handler(lambda m: m.message_type == MessageType.METHOD_CALL or None)
    call = asyncio.ensure_future(bus_call(bus, call_to(peer), 10, "the peer"))
    await until(lambda: replies.waiting == 1, "the call is sent")
    peer.disconnect()
    with pytest.raises(PeerGone):
        await call
    assert replies.waiting == 0


async def test_stopped_the_connection_is_back_to_dbus_fasts_calls(
    bare_bus: Stack, silent: MessageBus
) -> None:
    bus = await connect(bare_bus)
    replies = Replies(bus)
    replies.start()
    call = asyncio.ensure_future(bus_call(bus, call_to(silent), 60, "the peer"))
    await until(lambda: replies.waiting == 1, "the call is sent")
    await replies.stop()
    try:
        with pytest.raises(Unavailable):  # what was waiting is failed, not left hanging
            await asyncio.wait_for(call, 10)
        (name_id,) = await bus_method(bus, "GetId", "", [], 5)
        assert name_id
        assert replies.waiting == 0
    finally:
        bus.disconnect()
