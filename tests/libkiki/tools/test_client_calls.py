"""``ToolClient.call`` against a scripted broker on a real Unix socket: the answer, the tool's
error, the call's timeout and its cancellation (both told to the broker), a call over the
in-flight limit waiting for a slot, and progress."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kikitest.stream_peer import ScriptedBroker
from libkiki.errors import Timeout, ToolError
from libkiki.tools import ERROR_DATA_META, ToolClient

pytestmark = pytest.mark.integration

NSID = "org.example.echo"


@pytest.fixture
async def broker(sockdir: Path) -> AsyncIterator[ScriptedBroker]:
    async with ScriptedBroker(sockdir / "tools.sock").serving() as peer:
        yield peer


async def test_a_call_gets_the_structured_output(broker: ScriptedBroker) -> None:
    async with ToolClient(broker.path) as tools:
        conn = await broker.connection()
        call = asyncio.create_task(tools.call(NSID, {"text": "hi"}, idempotency_key="k1"))
        request = await conn.expect("tools/call")
        assert request["params"] == {
            "name": NSID,
            "arguments": {"text": "hi"},
            "_meta": {"dev.kiki/idempotencyKey": "k1"},
        }
        await conn.answer(request["id"], {"structuredContent": {"text": "hi"}, "isError": False})
        assert await call == {"text": "hi"}


async def test_a_tool_error_is_raised_with_its_data(broker: ScriptedBroker) -> None:
    async with ToolClient(broker.path) as tools:
        conn = await broker.connection()
        call = asyncio.create_task(tools.call(NSID))
        request = await conn.expect("tools/call")
        failed = {
            "content": [{"type": "text", "text": "no printer"}],
            "isError": True,
            "_meta": {ERROR_DATA_META: {"printer": None}},
        }
        await conn.answer(request["id"], failed)
        with pytest.raises(ToolError, match="no printer") as raised:
            await call
        assert raised.value.data == {"printer": None}


async def test_a_call_past_its_timeout_raises_and_tells_the_broker(
    broker: ScriptedBroker,
) -> None:
    async with ToolClient(broker.path) as tools:
        conn = await broker.connection()
        with pytest.raises(Timeout):
            await tools.call(NSID, timeout=0.05)
        request = await conn.expect("tools/call")
        cancelled = await conn.expect("notifications/cancelled")
        assert cancelled["params"]["requestId"] == request["id"]


async def test_a_cancelled_call_tells_the_broker(broker: ScriptedBroker) -> None:
    async with ToolClient(broker.path) as tools:
        conn = await broker.connection()
        call = asyncio.create_task(tools.call(NSID))
        request = await conn.expect("tools/call")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        cancelled = await conn.expect("notifications/cancelled")
        assert cancelled["params"]["requestId"] == request["id"]
        # The connection is still good, and the late answer is dropped.
        await conn.answer(request["id"], {"structuredContent": {"late": 1}, "isError": False})
        again = asyncio.create_task(tools.call(NSID))
        second = await conn.expect("tools/call")
        await conn.answer(second["id"], {"structuredContent": {"text": "ok"}, "isError": False})
        assert await again == {"text": "ok"}


async def test_a_call_over_the_in_flight_limit_waits_for_a_slot(broker: ScriptedBroker) -> None:
    async with ToolClient(broker.path, max_in_flight=1) as tools:
        conn = await broker.connection()
        first = asyncio.create_task(tools.call(NSID, {"n": 1}))
        second = asyncio.create_task(tools.call(NSID, {"n": 2}))
        one = await conn.expect("tools/call")
        assert one["params"]["arguments"] == {"n": 1}
        assert conn.received.empty()  # the second waits for the first's slot
        await conn.answer(one["id"], {"structuredContent": {"n": 1}, "isError": False})
        two = await conn.expect("tools/call")
        assert two["params"]["arguments"] == {"n": 2}
        await conn.answer(two["id"], {"structuredContent": {"n": 2}, "isError": False})
        assert await first == {"n": 1}
        assert await second == {"n": 2}


async def test_progress_reaches_the_callback(broker: ScriptedBroker) -> None:
    seen: list[Any] = []

    async def on_progress(params: dict[str, Any]) -> None:
        seen.append((params["progress"], params.get("total")))

    async with ToolClient(broker.path) as tools:
        conn = await broker.connection()
        call = asyncio.create_task(tools.call(NSID, on_progress=on_progress))
        request = await conn.expect("tools/call")
        token = request["params"]["_meta"]["progressToken"]
        await conn.notify(
            "notifications/progress", {"progressToken": token, "progress": 1, "total": 2}
        )
        await conn.answer(request["id"], {"structuredContent": {"done": True}, "isError": False})
        assert await call == {"done": True}
        assert seen == [(1, 2)]
