"""dev.kiki.Tools1 on the real gateway and broker: D-Bus callers list and call the broker's
tools, decided by the broker for the caller the bus names (a delegated principal), errors as
D-Bus errors named from libkiki's tree."""

from __future__ import annotations

import json
from typing import Any

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from kikitest import dbus_fixtures
from kikitest.dbus_fixtures import Stack
from libkiki.constellation import GATEWAY_BUS_NAME, GATEWAY_OBJECT_PATH

pytestmark = pytest.mark.integration

# The session's shared peers (kikitest.dbus_fixtures).
gateway_stack = dbus_fixtures.gateway_stack


async def tools1(stack: Stack, member: str, *args: str) -> Message:
    bus = await MessageBus(bus_address=stack.address).connect()
    try:
        reply = await bus.call(
            Message(
                destination=GATEWAY_BUS_NAME,
                path=GATEWAY_OBJECT_PATH,
                interface="dev.kiki.Tools1",
                member=member,
                signature="ss" if args else "",
                body=list(args),
            )
        )
    finally:
        bus.disconnect()
    assert reply is not None
    return reply


def answer(reply: Message) -> Any:
    assert reply.message_type == MessageType.METHOD_RETURN, (reply.error_name, reply.body)
    return json.loads(reply.body[0])


async def test_a_dbus_caller_lists_and_calls_the_brokers_tools(gateway_stack: Stack) -> None:
    listed = answer(await tools1(gateway_stack, "ListTools"))
    assert "dev.kiki.media.listPlayers" in {tool["name"] for tool in listed}
    players = answer(await tools1(gateway_stack, "Call", "dev.kiki.media.listPlayers", "{}"))
    assert isinstance(players["players"], list)


async def test_a_tool_error_is_a_dbus_error_with_the_lexicons_name(gateway_stack: Stack) -> None:
    reply = await tools1(gateway_stack, "Call", "dev.kiki.media.play", '{"player": "nosuch"}')
    assert reply.message_type == MessageType.ERROR
    assert reply.error_name == "dev.kiki.Error.Tool"
    assert reply.body[1] == "NoPlayer"


async def test_the_broker_decides_for_the_dbus_caller_not_the_gateway(
    gateway_stack: Stack,
) -> None:
    # The gateway's own uid may read the audit log; the D-Bus caller's delegated principal
    # (remote:dbus:uid:N) is allowed the media tools only.
    reply = await tools1(gateway_stack, "Call", "dev.kiki.tools.readAuditLog", "{}")
    assert reply.message_type == MessageType.ERROR
    assert reply.error_name == "dev.kiki.Error.AccessDenied"


async def test_a_dbus_caller_lists_what_it_may_call(gateway_stack: Stack) -> None:
    # As the call above: the gateway's uid may call readAuditLog, its D-Bus callers may not.
    listed = {tool["name"] for tool in answer(await tools1(gateway_stack, "ListTools"))}
    assert "dev.kiki.media.listPlayers" in listed
    assert "dev.kiki.tools.readAuditLog" not in listed
    assert listed <= {n for n in listed if n.startswith(("dev.kiki.media.", "dev.kiki.notify."))}


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("dev.kiki.media.listPlayers", "{not json"), "dev.kiki.Error.InvalidArgs"),
        (("dev.kiki.media.listPlayers", "[1]"), "dev.kiki.Error.InvalidArgs"),
        (("dev.kiki.nosuch.tool", "{}"), "dev.kiki.Error.InvalidArgs"),  # MCP: unknown tool
    ],
)
async def test_bad_calls_are_typed_dbus_errors(
    gateway_stack: Stack, args: tuple[str, str], error: str
) -> None:
    reply = await tools1(gateway_stack, "Call", *args)
    assert reply.message_type == MessageType.ERROR
    assert reply.error_name == error


async def test_tools1_is_introspectable(gateway_stack: Stack) -> None:
    bus = await MessageBus(bus_address=gateway_stack.address).connect()
    try:
        node = await bus.introspect(GATEWAY_BUS_NAME, GATEWAY_OBJECT_PATH)
    finally:
        bus.disconnect()
    iface = next(i for i in node.interfaces if i.name == "dev.kiki.Tools1")
    methods = {m.name: (m.in_signature, m.out_signature) for m in iface.methods}
    assert methods == {"ListTools": ("", "s"), "Call": ("ss", "s")}
