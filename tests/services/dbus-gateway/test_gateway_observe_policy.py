"""Other apps' notifications as a stream (``dev.kiki.notify.subscribeObserved``, on by
default): the gateway declares it private when it registers, so the broker lets the session's
own agent (the gateway's user) follow it and refuses two principals its policy otherwise lets
subscribe to ``dev.kiki.notify.*``: a second Unix user in the default group, and a remote
person through a trusted delegate."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
from collections.abc import Iterator
from typing import Any

import pytest
from dbus_fast import Message
from dbus_fast.aio import MessageBus

from kikitest import dbus_fixtures, until
from kikitest.dbus_fixtures import Stack
from kikitest.second_user import attacker_account, open_to_others, run_as
from libkiki.tools import ON_BEHALF_OF_META, ToolClient

pytestmark = pytest.mark.integration

OBSERVED = "dev.kiki.notify.subscribeObserved"
EVENTS = "dev.kiki.notify.subscribeEvents"  # the agent's own notifications: not private
# The broker trusts this uid (the gateway's, and the test's) as a delegate; the default group,
# the second user and D-Bus callers of this uid are let in on dev.kiki.notify.* (a glob).
POLICY = """
default_group = "{group}"

[[delegate]]
principals = ["uid:{uid}"]

[[allow]]
principals = ["remote:dbus:uid:{uid}", "uid:{other}"]
tools = ["dev.kiki.notify.*"]
"""


@pytest.fixture(scope="module")
def other() -> pwd.struct_passwd:
    return attacker_account()


@pytest.fixture(scope="module")
def stack(other: pwd.struct_passwd) -> Iterator[Stack]:
    """A bus with a broker and a gateway of their own (the gateway on its defaults)."""
    with contextlib.ExitStack() as exits:
        bus = dbus_fixtures._bus(exits)
        policy = POLICY.format(
            group=grp.getgrgid(other.pw_gid).gr_name, uid=os.getuid(), other=other.pw_uid
        )
        (bus.dir / "etc" / "tool-policy.toml").write_text(policy)
        for name in ("tool-broker", "dbus-gateway"):
            exits.callback(dbus_fixtures.stop, bus.spawn(name))
        open_to_others(bus.dir, bus.tools)
        yield bus


async def served(stack: Stack) -> None:
    async with ToolClient(stack.tools, timeout=10) as client:

        async def ready() -> bool:
            return {OBSERVED, EVENTS} <= {s["nsid"] for s in await client.streams()}

        await until(ready, "the gateway registered its notify streams")


async def notify(stack: Stack, summary: str) -> None:
    """Another app's ``Notify`` call, as the gateway's monitor sees it (whatever answers it)."""
    bus = await MessageBus(bus_address=stack.address).connect()
    try:
        await bus.call(
            Message(
                destination="org.freedesktop.Notifications",
                path="/org/freedesktop/Notifications",
                interface="org.freedesktop.Notifications",
                member="Notify",
                signature="susssasa{sv}i",
                body=["Mail", 0, "", summary, "", [], {}, -1],
            )
        )
    finally:
        bus.disconnect()


async def attempts(stack: Stack, on_behalf_of: dict[str, str] | None = None) -> dict[str, Any]:
    """Subscribe to each notify stream (and unsubscribe): "ok", or the error's code."""
    out: dict[str, Any] = {}
    async with ToolClient(stack.tools, timeout=10) as client:
        for nsid in (EVENTS, OBSERVED):
            params: dict[str, Any] = {"nsid": nsid}
            if on_behalf_of is not None:
                params["_meta"] = {ON_BEHALF_OF_META: on_behalf_of}
            try:
                answer = await client.connection.request("kiki/subscribe", params)
            except Exception as exc:
                out[nsid] = getattr(exc, "jsonrpc_code", repr(exc))
                continue
            out[nsid] = "ok"
            sub = answer["subscription"]
            await client.connection.request("kiki/unsubscribe", {"subscription": sub})
    return out


async def test_the_sessions_agent_follows_other_apps_notifications(stack: Stack) -> None:
    await served(stack)
    async with (
        ToolClient(stack.tools, timeout=10) as client,
        client.subscribe(OBSERVED) as stream,
    ):
        first = asyncio.ensure_future(anext(stream.messages()))
        async with asyncio.timeout(20):
            while not first.done():  # (until the stream's listener is in place)
                await notify(stack, "for the agent")
                await asyncio.wait({first}, timeout=0.2)
    assert first.result()["notification"]["summary"] == "for the agent"


async def test_another_user_in_the_default_group_is_refused(
    stack: Stack, other: pwd.struct_passwd
) -> None:
    await served(stack)

    async def attempt() -> dict[str, Any]:
        return await attempts(stack)

    out = run_as(other, attempt)
    out.pop("log")
    assert out == {EVENTS: "ok", OBSERVED: -32003}


async def test_a_remote_person_through_a_delegate_is_refused(stack: Stack) -> None:
    await served(stack)
    person = {"subject": f"dbus:uid:{os.getuid()}"}
    assert await attempts(stack, person) == {EVENTS: "ok", OBSERVED: -32003}
