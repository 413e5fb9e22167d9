"""The gateway's private stream across a broker restart: the real gateway serves
``dev.kiki.notify.subscribeObserved`` from its one provider, declared private
(``ToolProvider.subscription(..., private=True)``); when the broker comes back, the gateway
registers again and the new broker (which knows nothing of the first registration) keeps the
stream from a second Unix user in the default group while the session's own user follows it."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import pwd
from collections.abc import Iterator
from typing import Any

import pytest

from kikitest import dbus_fixtures, until
from kikitest.dbus_fixtures import Stack
from kikitest.second_user import attacker_account, open_to_others, run_as
from libkiki.errors import KikiError
from libkiki.tools import ToolClient

pytestmark = pytest.mark.integration

OBSERVED = "dev.kiki.notify.subscribeObserved"
EVENTS = "dev.kiki.notify.subscribeEvents"  # the agent's own notifications: not private
# The default group would let the second user follow any stream not declared private.
POLICY = """
default_group = "{group}"
"""


@pytest.fixture(scope="module")
def other() -> pwd.struct_passwd:
    return attacker_account()


@pytest.fixture(scope="module")
def stack(other: pwd.struct_passwd) -> Iterator[Stack]:
    """A bus with a broker and a gateway of their own (the gateway on its defaults)."""
    with contextlib.ExitStack() as exits:
        bus = dbus_fixtures._bus(exits)
        policy = POLICY.format(group=grp.getgrgid(other.pw_gid).gr_name)
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


async def attempts(stack: Stack) -> dict[str, Any]:
    """Subscribe to each notify stream (and unsubscribe): "ok", or the error's code."""
    out: dict[str, Any] = {}
    async with ToolClient(stack.tools, timeout=10) as client:
        for nsid in (EVENTS, OBSERVED):
            try:
                answer = await client.connection.request("kiki/subscribe", {"nsid": nsid})
            except KikiError as exc:
                out[nsid] = exc.jsonrpc_code
                continue
            out[nsid] = "ok"
            sub = answer["subscription"]
            await client.connection.request("kiki/unsubscribe", {"subscription": sub})
    return out


def as_other(stack: Stack, other: pwd.struct_passwd) -> dict[str, Any]:
    async def attempt() -> dict[str, Any]:
        return await attempts(stack)

    out: dict[str, Any] = run_as(other, attempt)
    out.pop("log")
    return out


async def test_registered_again_after_a_broker_restart_it_is_still_private(
    stack: Stack, other: pwd.struct_passwd
) -> None:
    await served(stack)
    assert as_other(stack, other) == {EVENTS: "ok", OBSERVED: -32003}
    dbus_fixtures.stop(stack.procs["tool-broker"])
    broker = stack.spawn("tool-broker")
    try:
        open_to_others(stack.tools)
        async with asyncio.timeout(30):
            await served(stack)  # the gateway came back on its own
        assert as_other(stack, other) == {EVENTS: "ok", OBSERVED: -32003}
        assert await attempts(stack) == {EVENTS: "ok", OBSERVED: "ok"}
    finally:
        dbus_fixtures.stop(broker)
