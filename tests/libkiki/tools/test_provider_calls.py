"""``ToolProvider`` answering ``tools/call`` against a scripted broker on a real Unix socket: a
tool that never awaits is answered as its call is read, in a context of its own; one that
awaits runs in a task; both keep their typed errors, models and cancellation."""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pydantic
import pytest

from kikitest.stream_peer import ScriptedBroker
from libkiki.errors import NotFound
from libkiki.tools import ToolCall, ToolProvider

pytestmark = pytest.mark.integration

CALLER = {"uid": 1000, "gid": 1000, "pid": 42, "groups": [1000]}
SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="nobody")


class Question(pydantic.BaseModel):
    text: str


class Answer(pydantic.BaseModel):
    text: str
    length: int


def provider_at(path: Path, seen: dict[str, Any], release: asyncio.Event) -> ToolProvider:
    provider = ToolProvider(path)

    @provider.tool("org.example.now")
    async def now(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        seen["now"] = (asyncio.current_task(), SEEN.get(), call.caller)
        SEEN.set(args.get("mark", "now"))
        return {"text": args.get("text", "")}

    @provider.tool("org.example.model")
    async def model(args: Question, call: ToolCall) -> Answer:
        return Answer(text=args.text, length=len(args.text))

    @provider.tool("org.example.missing")
    async def missing(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        raise NotFound("no such thing", data={"thing": args.get("thing")})

    @provider.tool("org.example.bug")
    async def bug(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        raise RuntimeError("a bug")

    @provider.tool("org.example.cancelled")
    async def cancelled(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        raise asyncio.CancelledError

    @provider.tool("org.example.later")
    async def later(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        seen["later"] = asyncio.current_task()
        seen.setdefault("started", asyncio.Event()).set()
        try:
            await release.wait()
        except asyncio.CancelledError:
            seen.setdefault("cancelled", asyncio.Event()).set()
            raise
        return {"text": "later"}

    return provider


CLOSED: list[bool] = []


async def waits(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    """What a tool's code is swapped for after it was decorated (no closure: any function's
    code fits it)."""
    try:
        await asyncio.sleep(3600)
    finally:
        CLOSED.append(True)
    return {}


@pytest.fixture
async def broker(sockdir: Path) -> AsyncIterator[ScriptedBroker]:
    async with ScriptedBroker(sockdir / "tools.sock").serving() as peer:
        yield peer


def call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "arguments": arguments, "_meta": {"dev.kiki/caller": CALLER}}


async def test_a_tool_that_never_awaits_is_answered_without_a_task(
    broker: ScriptedBroker,
) -> None:
    seen: dict[str, Any] = {}
    async with provider_at(broker.path, seen, asyncio.Event()).connect():
        conn = await broker.connection()
        answer = await conn.request("tools/call", call("org.example.now", {"text": "hi"}))
        assert answer["result"] == {"structuredContent": {"text": "hi"}, "isError": False}
        task, _, caller = seen["now"]
        assert task is None
        assert caller == CALLER


async def test_a_tool_that_never_awaits_keeps_its_context_variables_to_itself(
    broker: ScriptedBroker,
) -> None:
    seen: dict[str, Any] = {}
    async with provider_at(broker.path, seen, asyncio.Event()).connect():
        conn = await broker.connection()
        for mark in ("first", "second"):
            await conn.request("tools/call", call("org.example.now", {"mark": mark}))
            assert seen["now"][1] == "nobody"


async def test_models_in_and_out_of_a_tool_that_never_awaits(broker: ScriptedBroker) -> None:
    seen: dict[str, Any] = {}
    async with provider_at(broker.path, seen, asyncio.Event()).connect():
        conn = await broker.connection()
        answer = await conn.request("tools/call", call("org.example.model", {"text": "abc"}))
        assert answer["result"]["structuredContent"] == {"text": "abc", "length": 3}
        bad = await conn.request("tools/call", call("org.example.model", {"text": 3}))
        assert bad["error"]["code"] == -32602


async def test_errors_of_a_tool_that_never_awaits_are_typed_wire_errors(
    broker: ScriptedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    seen: dict[str, Any] = {}
    async with provider_at(broker.path, seen, asyncio.Event()).connect():
        conn = await broker.connection()
        missing = await conn.request("tools/call", call("org.example.missing", {"thing": "x"}))
        assert missing["error"]["code"] == NotFound.jsonrpc_code
        assert missing["error"]["data"] == {"thing": "x"}
        bug = await conn.request("tools/call", call("org.example.bug", {}))
        assert bug["error"] == {"code": -32603, "message": "Internal error"}
        assert "a bug" in caplog.text
        unknown = await conn.request("tools/call", call("org.example.nothing", {}))
        assert unknown["error"]["code"] == NotFound.jsonrpc_code


async def test_a_tool_cancelling_itself_without_awaiting_is_never_answered(
    broker: ScriptedBroker,
) -> None:
    seen: dict[str, Any] = {}
    async with provider_at(broker.path, seen, asyncio.Event()).connect():
        conn = await broker.connection()
        gone = asyncio.create_task(conn.request("tools/call", call("org.example.cancelled", {})))
        answer = await conn.request("tools/call", call("org.example.now", {"text": "after"}))
        assert answer["result"]["structuredContent"] == {"text": "after"}
        assert not gone.done()  # its answer would have come before the one read after it
        gone.cancel()


async def test_a_tool_that_awaits_runs_in_a_task_and_is_cancelled_with_its_call(
    broker: ScriptedBroker,
) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()
    seen: dict[str, Any] = {"started": started, "cancelled": cancelled}
    release = asyncio.Event()
    async with provider_at(broker.path, seen, release).connect():
        conn = await broker.connection()
        first = asyncio.create_task(conn.request("tools/call", call("org.example.later", {})))
        async with asyncio.timeout(10):
            await started.wait()
        # A call that needs no waiting, read while another runs, is answered all the same.
        now = await conn.request("tools/call", call("org.example.now", {"text": "meanwhile"}))
        assert now["result"]["structuredContent"] == {"text": "meanwhile"}
        assert isinstance(seen["later"], asyncio.Task)
        await conn.notify("notifications/cancelled", {"requestId": 1, "reason": "test"})
        async with asyncio.timeout(10):
            await cancelled.wait()
        assert not first.done()
        first.cancel()
        started.clear()
        again = asyncio.create_task(conn.request("tools/call", call("org.example.later", {})))
        async with asyncio.timeout(10):
            await started.wait()
        release.set()
        assert (await again)["result"]["structuredContent"] == {"text": "later"}


async def test_a_tool_whose_code_was_swapped_for_an_awaiting_one_fails_and_is_closed(
    broker: ScriptedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    provider = ToolProvider(broker.path)
    CLOSED.clear()

    @provider.tool("org.example.swapped")
    async def swapped(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        return {}

    swapped.__code__ = waits.__code__
    async with provider.connect():
        conn = await broker.connection()
        answer = await conn.request("tools/call", call("org.example.swapped", {}))
        assert answer["error"]["code"] == -32603
        assert CLOSED == [True]
        assert "had no await when decorated" in caplog.text


PLAIN_PROVIDER = """
import asyncio, sys
import orjson
from libkiki.tools import ToolProvider

async def main(path):
    answered = asyncio.get_running_loop().create_future()

    async def broker(reader, writer):
        registration = orjson.loads(await reader.readline())
        writer.write(orjson.dumps({"jsonrpc": "2.0", "id": registration["id"], "result": {}}))
        call = {"name": "org.example.now", "arguments": {}}
        writer.write(b"\\n" + orjson.dumps(
            {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": call}) + b"\\n")
        answered.set_result(orjson.loads(await reader.readline()))

    server = await asyncio.start_unix_server(broker, path)
    provider = ToolProvider(path)

    @provider.tool("org.example.now")
    async def now(args, call):
        return {"text": "ok"}

    async with server, provider.connect():
        answer = await asyncio.wait_for(answered, 10)
    print(orjson.dumps({"answer": answer, "models": "pydantic.main" in sys.modules}).decode())

asyncio.run(main(sys.argv[1]))
"""


async def test_a_provider_of_plain_dicts_never_loads_pydantic_models(sockdir: Path) -> None:
    # Loading them costs a provider's first call tens of milliseconds and about 1.4 MB.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PLAIN_PROVIDER,
        str(sockdir / "plain.sock"),
        stdout=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, _ = await process.communicate()
    report = orjson.loads(out)
    assert report["answer"]["result"]["structuredContent"] == {"text": "ok"}
    assert report["models"] is False
