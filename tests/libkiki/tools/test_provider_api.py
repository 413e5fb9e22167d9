"""libkiki.tools.provider: a ToolProvider's decoration, registration and connection limits."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from kikitest.broker_lexicons import ECHO, LEXICONS, SLOW
from libkiki.errors import Conflict, InvalidParams, KikiError
from libkiki.rpc import Methods, connect_unix
from libkiki.tools import ToolCall, ToolClient, ToolProvider

pytestmark = pytest.mark.integration


def echo_provider(path: Path, **limits: int) -> ToolProvider:
    provider = ToolProvider(path, lexicons=LEXICONS, **limits)

    @provider.tool(ECHO)
    async def echo(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        return {"text": args["text"]}

    return provider


async def test_a_refused_registration_leaves_the_provider_unconnected(
    broker: tuple[Path, Any],
) -> None:
    path, _ = broker
    second = echo_provider(path)
    async with asyncio.timeout(20), echo_provider(path).connect():
        with pytest.raises(Conflict):
            async with second.connect():
                pass
        with pytest.raises(KikiError, match="not connected"):
            await second.serve_forever()


def test_a_second_function_for_one_nsid_is_refused() -> None:
    provider = echo_provider(Path("/nonexistent.sock"))

    async def other(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        return {"text": "other"}

    with pytest.raises(ValueError, match=f"{ECHO}: this provider already has"):
        provider.tool(ECHO)(other)
    assert provider.nsids == [ECHO]


async def test_a_tool_decorated_while_connected_is_refused(broker: tuple[Path, Any]) -> None:
    path, _ = broker
    provider = echo_provider(path)

    async def slow(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        return {"text": "slow"}

    async with asyncio.timeout(20), provider.connect():
        with pytest.raises(RuntimeError, match="before connect"):
            provider.tool(SLOW)(slow)
    assert provider.nsids == [ECHO]


CALLS = 100


async def echo_calls_at_once(path: Path, provider: ToolProvider) -> list[Any]:
    """CALLS echo calls at once through one client allowing 128 in flight: their results."""
    async with (
        asyncio.timeout(20),
        provider.connect(),
        ToolClient(path, max_in_flight=128) as client,
    ):
        calls = [client.call(ECHO, {"text": str(i)}) for i in range(CALLS)]
        return await asyncio.gather(*calls, return_exceptions=True)


@pytest.mark.parametrize("broker", [{"KIKI_TOOL_BROKER_MAX_IN_FLIGHT": "128"}], indirect=True)
async def test_limits_above_the_defaults_allow_more_calls_in_flight(
    broker: tuple[Path, Any],
) -> None:
    path, _ = broker
    provider = ToolProvider(path, lexicons=LEXICONS, max_in_flight=128)
    arrived = 0
    everyone = asyncio.Event()  # every call is in the provider at once

    @provider.tool(ECHO)
    async def echo(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        nonlocal arrived
        arrived += 1
        if arrived == CALLS:
            everyone.set()
        await everyone.wait()
        return {"text": args["text"]}

    assert await echo_calls_at_once(path, provider) == [{"text": str(i)} for i in range(CALLS)]


@pytest.mark.parametrize("broker", [{"KIKI_TOOL_BROKER_MAX_IN_FLIGHT": "128"}], indirect=True)
async def test_a_provider_taking_fewer_calls_than_the_broker_gets_no_more(
    broker: tuple[Path, Any],
) -> None:
    # The provider keeps libkiki's 64 and says so when it registers: the broker holds the
    # other calls until one ends, instead of sending 100 and getting 36 refused.
    path, _ = broker
    provider = ToolProvider(path, lexicons=LEXICONS)
    inside = most = 0
    full = asyncio.Event()

    @provider.tool(ECHO)
    async def echo(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        if inside == provider.max_in_flight:
            full.set()
        await full.wait()
        inside -= 1
        return {"text": args["text"]}

    assert await echo_calls_at_once(path, provider) == [{"text": str(i)} for i in range(CALLS)]
    assert most == 64


async def test_max_in_flight_at_registration_must_be_a_positive_integer(
    broker: tuple[Path, Any],
) -> None:
    path, _ = broker
    async with asyncio.timeout(20), connect_unix(path, Methods()) as conn:
        for bad in (0, -1, "8", True, 1.5):
            with pytest.raises(InvalidParams, match="maxInFlight must be a positive integer"):
                await conn.request("kiki/registerTools", {"tools": [], "maxInFlight": bad})


BIG = 2_000_000
STORE = "org.example.test.store"
STORE_LEXICON = {
    "lexicon": 1,
    "id": STORE,
    "defs": {
        "main": {
            "type": "procedure",
            "input": {
                "encoding": "application/json",
                "schema": {
                    "type": "object",
                    "required": ["blob"],
                    "properties": {"blob": {"type": "string", "maxLength": 3_000_000}},
                },
            },
            "output": {
                "encoding": "application/json",
                "schema": {"type": "object", "properties": {"n": {"type": "integer"}}},
            },
        }
    },
}


@pytest.mark.parametrize("broker", [{"KIKI_TOOL_BROKER_MAX_LINE": str(4 << 20)}], indirect=True)
async def test_limits_above_the_defaults_allow_longer_messages(broker: tuple[Path, Any]) -> None:
    path, _ = broker
    provider = ToolProvider(path, lexicons=[STORE_LEXICON], max_line=4 << 20)

    @provider.tool(STORE)
    async def store(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        return {"n": len(args["blob"])}

    async with asyncio.timeout(20), provider.connect(), ToolClient(path, max_line=4 << 20) as c:
        assert await c.call(STORE, {"blob": "x" * BIG}) == {"n": BIG}
