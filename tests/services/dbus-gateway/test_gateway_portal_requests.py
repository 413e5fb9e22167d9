"""The portal Request/Response protocol against a portal of our own (dbus-fast), on a bus of
its own with its own broker and gateway (the real portal owns the name on the shared bus):
a Response sent before the method's answer is not missed, a cancel and a silence are typed,
and settings come with their changes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from kiki_dbus_gateway.portal import PORTAL, PORTAL_PATH, request_path
from kikitest import until
from kikitest.dbus_fixtures import Stack, _gateway, shared
from libkiki.errors import KikiError, ToolError
from libkiki.tools import ToolClient

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    make = functools.partial(
        _gateway, gateway_env={"KIKI_DBUS_GATEWAY_PORTAL_REQUEST_TIMEOUT": "1"}
    )
    with shared("fake-portal", make) as found:
        yield found


class FakePortal:
    """OpenURI: ``…/ok`` answers success (its Response sent *before* the method returns),
    ``…/cancel`` cancelled, ``…/never`` nothing. Settings: dark, and SettingChanged on demand."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus

    def handle(self, msg: Message) -> bool:
        if msg.message_type != MessageType.METHOD_CALL:
            return False
        if msg.member == "OpenURI":
            _parent, uri, options = msg.body
            assert msg.sender is not None
            path = request_path(msg.sender, options["handle_token"].value)
            code = {"ok": 0, "cancel": 1}.get(uri.rsplit("/", 1)[-1])
            if code is not None:
                self.bus.send(
                    Message.new_signal(
                        path, "org.freedesktop.portal.Request", "Response", "ua{sv}", [code, {}]
                    )
                )
            self.bus.send(Message.new_method_return(msg, "o", [path]))
            return True
        if msg.member == "ReadAll":
            values = {"org.freedesktop.appearance": {"color-scheme": Variant("u", 1)}}
            self.bus.send(Message.new_method_return(msg, "a{sa{sv}}", [values]))
            return True
        return False

    def setting_changed(self) -> None:
        self.bus.send(
            Message.new_signal(
                PORTAL_PATH,
                "org.freedesktop.portal.Settings",
                "SettingChanged",
                "ssv",
                ["org.freedesktop.appearance", "color-scheme", Variant("u", 2)],
            )
        )


@pytest.fixture
async def tools(stack: Stack) -> AsyncIterator[tuple[ToolClient, FakePortal]]:
    bus = await MessageBus(bus_address=stack.address).connect()
    portal = FakePortal(bus)
    bus.add_message_handler(portal.handle)
    await bus.request_name(PORTAL)
    try:
        async with ToolClient(stack.tools, timeout=10) as client:

            async def ready() -> bool:
                with contextlib.suppress(KikiError):
                    await client.call("dev.kiki.portal.settings")
                    return True
                return False

            await until(ready, "the gateway registered the portal tools")
            yield client, portal
    finally:
        bus.disconnect()


async def test_a_response_before_the_answer_is_not_missed(
    tools: tuple[ToolClient, FakePortal],
) -> None:
    client, _ = tools
    assert await client.call("dev.kiki.portal.openUri", {"uri": "https://x.test/ok"}) == {
        "opened": True
    }


@pytest.mark.parametrize(("last", "error"), [("cancel", "Cancelled"), ("never", "Timeout")])
async def test_a_cancel_and_a_silence_are_typed(
    tools: tuple[ToolClient, FakePortal], last: str, error: str
) -> None:
    client, _ = tools
    with pytest.raises(ToolError) as caught:
        await client.call("dev.kiki.portal.openUri", {"uri": f"https://x.test/{last}"})
    assert caught.value.data == {"error": error}


async def test_settings_and_their_changes(tools: tuple[ToolClient, FakePortal]) -> None:
    client, portal = tools
    assert await client.call("dev.kiki.portal.settings") == {"colorScheme": "dark"}
    async with client.subscribe("dev.kiki.portal.subscribeSettings", session="s") as stream:
        # The stream's listener on the gateway is registered some time after the broker said
        # subscribed: the portal says it again until the first change arrives.
        first = asyncio.ensure_future(anext(stream.messages()))
        async with asyncio.timeout(20):
            while not first.done():
                portal.setting_changed()
                await asyncio.wait({first}, timeout=0.2)
        event: dict[str, Any] = first.result()
    assert event == {
        "$type": "dev.kiki.portal.subscribeSettings#settingChanged",
        "namespace": "org.freedesktop.appearance",
        "key": "color-scheme",
        "valueJson": "2",
    }
