"""A real gateway on a private session bus: its health answer at the declared object path, a
second instance refused its name."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from libkiki.constellation import GATEWAY_BUS_NAME, GATEWAY_OBJECT_PATH, SERVICE_INTERFACE

pytestmark = pytest.mark.integration


async def get_info(address: str) -> dict[str, Any]:
    bus = await MessageBus(bus_address=address, bus_type=BusType.SESSION).connect()
    try:
        reply = await bus.call(
            Message(
                destination=GATEWAY_BUS_NAME,
                path=GATEWAY_OBJECT_PATH,
                interface=SERVICE_INTERFACE,
                member="GetInfo",
            )
        )
    finally:
        bus.disconnect()
    assert reply is not None
    assert reply.message_type == MessageType.METHOD_RETURN, reply.body
    return {key: variant.value for key, variant in reply.body[0].items()}


def test_the_gateway_answers_at_its_declared_name_and_path(
    session_bus: str, spawn_service: Any
) -> None:
    env = {"DBUS_SESSION_BUS_ADDRESS": session_bus}
    proc, notes = spawn_service("dbus-gateway", extra_env=env)
    ready = notes.wait_for("READY")
    assert ready["STATUS"] == f"owning {GATEWAY_BUS_NAME} on the session bus"
    info = asyncio.run(get_info(session_bus))
    assert (info["name"], info["pid"], info["status"]) == ("dbus-gateway", proc.pid, "ready")
    assert info["counters"]["requests"] == 1

    second, _ = spawn_service("dbus-gateway", extra_env=env)
    assert second.wait(timeout=20) == 1
    assert b"is owned by another process" in second.stderr.read()
    assert proc.poll() is None
