"""The notification tools against a real server: dunst under Xvfb on the gateway's bus;
notify-send as another app, dunstctl as the user clicking."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from kikitest import dbus_fixtures, until
from kikitest.dbus_fixtures import Dunst, Stack
from libkiki.constellation import GATEWAY_BUS_NAME, GATEWAY_OBJECT_PATH
from libkiki.tools import ToolClient

pytestmark = pytest.mark.interop

# The session's shared peers (kikitest.dbus_fixtures).
gateway_stack = dbus_fixtures.gateway_stack
dunst = dbus_fixtures.dunst


@pytest.fixture
async def tools(gateway_stack: Stack, dunst: Dunst) -> Any:
    dunst.ctl("close-all")
    async with ToolClient(gateway_stack.tools, timeout=10) as client:

        async def registered() -> bool:
            return "dev.kiki.notify.notify" in {t["name"] for t in await client.list()}

        await until(registered, "the gateway registered the notify tools")
        yield client


async def test_the_servers_capabilities_and_information(tools: ToolClient) -> None:
    caps = await tools.call("dev.kiki.notify.capabilities")
    assert "actions" in caps["capabilities"]
    info = await tools.call("dev.kiki.notify.serverInfo")
    assert info["name"] == "dunst"


async def test_an_invoked_action_and_the_close_reach_the_agent(
    tools: ToolClient, dunst: Dunst
) -> None:
    async with tools.subscribe("dev.kiki.notify.subscribeEvents", session="actions") as stream:
        sent = await tools.call(
            "dev.kiki.notify.notify",
            {
                "summary": "Build finished",
                "body": "all green",
                "urgency": "critical",
                "actions": [{"key": "default", "label": "Open"}],
                "expireTimeoutMs": 0,
            },
        )
        await until(lambda: dunst.ctl("count", "displayed") == "1", "dunst shows it")
        dunst.ctl("action", "0")  # the user clicks it
        messages = stream.messages()
        async with asyncio.timeout(20):
            first = await anext(messages)
        assert first == {
            "$type": "dev.kiki.notify.subscribeEvents#actionInvoked",
            "id": sent["id"],
            "key": "default",
        }
        dunst.ctl("close")  # and then dismisses it (dunst keeps it open after an action)
        async with asyncio.timeout(20):
            second = await anext(messages)
        assert second == {
            "$type": "dev.kiki.notify.subscribeEvents#closed",
            "id": sent["id"],
            "reason": "dismissed",
        }


async def test_closing_its_own_notification_says_closed(tools: ToolClient) -> None:
    async with tools.subscribe("dev.kiki.notify.subscribeEvents", session="close") as stream:
        sent = await tools.call("dev.kiki.notify.notify", {"summary": "soon gone"})
        assert (await tools.call("dev.kiki.notify.close", {"id": sent["id"]})) == {"ok": True}
        async with asyncio.timeout(20):
            event = await anext(stream.messages())
    assert event == {
        "$type": "dev.kiki.notify.subscribeEvents#closed",
        "id": sent["id"],
        "reason": "closed",
    }


def notify_send(stack: Stack, summary: str) -> None:
    subprocess.run(
        ["notify-send", "--app-name=Mail", "--urgency=low", summary, "you have mail"],
        env=stack.env,
        timeout=20,
        check=True,
    )


async def test_another_apps_notification_is_seen_and_kept(
    tools: ToolClient, gateway_stack: Stack
) -> None:
    async with tools.subscribe("dev.kiki.notify.subscribeObserved", session="seen") as stream:
        await tools.call("dev.kiki.notify.notify", {"summary": "the agent's own"})
        await asyncio.to_thread(notify_send, gateway_stack, "New message")
        async with asyncio.timeout(20):
            event = await anext(stream.messages())
    seen = event["notification"]
    assert (seen["appName"], seen["summary"], seen["body"], seen["urgency"]) == (
        "Mail",
        "New message",
        "you have mail",
        "low",
    )
    recent = await tools.call("dev.kiki.notify.recent", {"limit": 1000})
    summaries = [n["summary"] for n in recent["notifications"]]
    assert "New message" in summaries
    assert "the agent's own" not in summaries


async def test_a_dbus_caller_may_not_read_others_notifications(gateway_stack: Stack) -> None:
    # The broker's policy lets this user's D-Bus callers call dev.kiki.notify.*; the gateway
    # still answers the history to the session's agent only.
    bus = await MessageBus(bus_address=gateway_stack.address).connect()
    try:
        reply = await bus.call(
            Message(
                destination=GATEWAY_BUS_NAME,
                path=GATEWAY_OBJECT_PATH,
                interface="dev.kiki.Tools1",
                member="Call",
                signature="ss",
                body=["dev.kiki.notify.recent", "{}"],
            )
        )
    finally:
        bus.disconnect()
    assert reply.message_type == MessageType.ERROR
    assert "session user's" in reply.body[0]
