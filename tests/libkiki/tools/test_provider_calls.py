"""``ToolProvider`` answering ``tools/call`` against a scripted broker on a real Unix socket:
every call runs in a task of its own (its context variables stay its own, the broker's
cancellation cancels it), with typed errors and models in and out."""

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

    @provider.tool("org.example.ran")
    async def ran(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        seen["ran"] = True
        return {}

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


@pytest.fixture
async def broker(sockdir: Path) -> AsyncIterator[ScriptedBroker]:
    async with ScriptedBroker(sockdir / "tools.sock").serving() as peer:
        yield peer


def call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "arguments": arguments, "_meta": {"dev.kiki/caller": CALLER}}


def line(message: dict[str, Any]) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", **message}) + b"\n"


async def test_a_tool_that_never_awaits_is_answered_from_a_task_of_its_own(
    broker: ScriptedBroker,
) -> None:
    seen: dict[str, Any] = {}
    async with provider_at(broker.path, seen, asyncio.Event()).connect():
        conn = await broker.connection()
        answer = await conn.request("tools/call", call("org.example.now", {"text": "hi"}))
        assert answer["result"] == {"structuredContent": {"text": "hi"}, "isError": False}
        task, _, caller = seen["now"]
        assert isinstance(task, asyncio.Task)
        assert caller == CALLER


async def test_a_tool_keeps_its_context_variables_to_itself(
    broker: ScriptedBroker,
) -> None:
    seen: dict[str, Any] = {}
    async with provider_at(broker.path, seen, asyncio.Event()).connect():
        conn = await broker.connection()
        for mark in ("first", "second"):
            await conn.request("tools/call", call("org.example.now", {"mark": mark}))
            assert seen["now"][1] == "nobody"


async def test_models_in_and_out_of_a_tool(broker: ScriptedBroker) -> None:
    seen: dict[str, Any] = {}
    async with provider_at(broker.path, seen, asyncio.Event()).connect():
        conn = await broker.connection()
        answer = await conn.request("tools/call", call("org.example.model", {"text": "abc"}))
        assert answer["result"]["structuredContent"] == {"text": "abc", "length": 3}
        bad = await conn.request("tools/call", call("org.example.model", {"text": 3}))
        assert bad["error"]["code"] == -32602


async def test_errors_of_a_tool_are_typed_wire_errors(
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


async def test_a_tool_cancelling_itself_is_never_answered(broker: ScriptedBroker) -> None:
    seen: dict[str, Any] = {}
    async with provider_at(broker.path, seen, asyncio.Event()).connect():
        conn = await broker.connection()
        gone = asyncio.create_task(conn.request("tools/call", call("org.example.cancelled", {})))
        await asyncio.sleep(0)  # its first step numbers and writes its request
        answer = await conn.request("tools/call", call("org.example.now", {"text": "after"}))
        # Numbered after it, so written after it: read, run and answered after it.
        assert answer["id"] == 2
        assert answer["result"]["structuredContent"] == {"text": "after"}
        assert not gone.done()  # its answer would have come before the one read after it
        gone.cancel()


async def test_a_call_cancelled_in_the_chunk_that_brought_it_never_runs(
    broker: ScriptedBroker,
) -> None:
    seen: dict[str, Any] = {}
    async with provider_at(broker.path, seen, asyncio.Event()).connect():
        conn = await broker.connection()
        tool_call = {"id": "gone", "method": "tools/call", "params": call("org.example.ran", {})}
        cancel = {"method": "notifications/cancelled", "params": {"requestId": "gone"}}
        conn.writer.write(line(tool_call) + line(cancel))
        await conn.writer.drain()
        answer = await conn.request("tools/call", call("org.example.now", {"text": "after"}))
        assert answer["result"]["structuredContent"] == {"text": "after"}
        assert "ran" not in seen


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


PLAIN_PROVIDER = """
import asyncio, sys
from typing import Any, TypedDict
import orjson
from libkiki.tools import ToolCall, ToolProvider

class Point(TypedDict):
    x: int

NAMES = ["org.example.bare", "org.example.dict", "org.example.typed", "org.example.point"]

async def main(path):
    answered = asyncio.get_running_loop().create_future()

    async def broker(reader, writer):
        registration = orjson.loads(await reader.readline())
        writer.write(orjson.dumps({"jsonrpc": "2.0", "id": registration["id"], "result": {}}))
        writer.write(b"\\n")
        for rid, name in enumerate(NAMES):
            call = {"name": name, "arguments": {"x": rid}}
            writer.write(orjson.dumps(
                {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": call}) + b"\\n")
        answers = [orjson.loads(await reader.readline()) for _ in NAMES]
        answered.set_result(sorted(answers, key=lambda answer: answer["id"]))

    server = await asyncio.start_unix_server(broker, path)
    provider = ToolProvider(path)

    @provider.tool("org.example.bare")
    async def bare(args, call):
        return {"text": "bare", "x": args["x"]}

    @provider.tool("org.example.dict")
    async def plain(args: dict, call: ToolCall) -> dict:
        return {"text": "dict", "x": args["x"]}

    @provider.tool("org.example.typed")
    async def typed(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        return {"text": "typed", "x": args["x"]}

    @provider.tool("org.example.point")
    async def point(args: Point, call: ToolCall) -> dict[str, Any]:
        return {"text": "point", "x": args["x"]}

    async with server, provider.connect():
        answers = await asyncio.wait_for(answered, 10)
    print(orjson.dumps({"answers": answers, "models": "pydantic.main" in sys.modules}).decode())

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
    texts = [answer["result"]["structuredContent"] for answer in report["answers"]]
    assert texts == [
        {"text": "bare", "x": 0},
        {"text": "dict", "x": 1},
        {"text": "typed", "x": 2},
        {"text": "point", "x": 3},
    ]
    assert report["models"] is False
