"""Tier 2: `kiki mcp`, the stdio bridge, against the real broker: what a host that writes its
requests and then closes stdin gets back."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from broker_lexicons import ECHO, LEXICONS, SLOW
from kikitest import VENV_BIN, kiki
from libkiki.tools import ToolCall, ToolProvider

Broker = tuple[Path, subprocess.Popen[bytes]]


def make_provider(path: Path) -> ToolProvider:
    """ECHO answers after ``delay`` ms; SLOW never answers."""
    provider = ToolProvider(path, lexicons=LEXICONS)

    @provider.tool(ECHO)
    async def echo(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        await asyncio.sleep(args.get("delay", 0) / 1000)
        return {"text": args["text"]}

    @provider.tool(SLOW)
    async def slow(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}

    return provider


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "0"},
    },
}


def call(rid: Any, name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    params = {"name": name, "arguments": arguments or {}}
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}


async def bridge(
    path: Path, *messages: Any, extra: tuple[str, ...] = (), tail: bytes = b""
) -> tuple[list[Any], str]:
    """Write ``messages`` (then ``tail``) to a fresh `kiki mcp` and close its stdin; what it
    printed, line by line, and its stderr."""
    proc = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "kiki"),
        "mcp",
        "--socket",
        str(path),
        *extra,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    data = b"".join(orjson.dumps(m) + b"\n" for m in messages) + tail
    out, err = await proc.communicate(data)
    assert proc.returncode == 0, err.decode()
    return [orjson.loads(line) for line in out.splitlines()], err.decode()


def by_id(lines: list[Any]) -> dict[Any, dict[str, Any]]:
    flat = [m for line in lines for m in (line if isinstance(line, list) else [line])]
    return {m["id"]: m for m in flat if "id" in m and "method" not in m}


async def test_answers_to_forwarded_requests_arrive_after_stdin_closes(broker: Broker) -> None:
    path, _ = broker
    async with asyncio.timeout(30), make_provider(path).connect():
        lines, _ = await bridge(
            path,
            INITIALIZE,
            call(2, ECHO, {"text": "x", "delay": 300}),
            call(3, "dev.kiki.service.getInfo"),
        )
    answers = by_id(lines)
    assert answers[1]["result"]["protocolVersion"] == "2025-11-25"
    assert answers[2]["result"]["structuredContent"]["text"] == "x"
    assert answers[3]["result"]["structuredContent"]["name"] == "tool-broker"


async def test_answers_are_waited_for_after_an_earlier_exchange(broker: Broker) -> None:
    # The host waits for the handshake's answer (the bridge is idle again), then sends a slow
    # call and closes stdin: the call is still owed, and waited for.
    path, _ = broker
    async with asyncio.timeout(30), make_provider(path).connect():
        proc = await asyncio.create_subprocess_exec(
            str(VENV_BIN / "kiki"),
            *("mcp", "--socket", str(path)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(orjson.dumps(INITIALIZE) + b"\n")
        assert orjson.loads(await proc.stdout.readline())["id"] == 1
        proc.stdin.write(orjson.dumps(call(2, ECHO, {"text": "late", "delay": 300})) + b"\n")
        proc.stdin.close()
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    [answer] = [orjson.loads(line) for line in out.splitlines()]
    assert answer["result"]["structuredContent"]["text"] == "late"
    assert err == b""


LONG_CALLS = pytest.mark.parametrize(
    "broker", [{"KIKI_TOOL_BROKER_CALL_TIMEOUT": "600"}], indirect=True
)


@LONG_CALLS
async def test_drain_waits_for_batches_but_not_for_streams_or_cancelled_calls(
    broker: Broker,
) -> None:
    # A listen stream is answered only at close and a cancelled call never: were the bridge to
    # wait for either, it would sit out its 600 s drain and the test's timeout would fire.
    path, _ = broker
    listen = {"notifications": {"toolsListChanged": True}}
    async with asyncio.timeout(30), make_provider(path).connect():
        lines, err = await bridge(
            path,
            [
                call(10, ECHO, {"text": "a", "delay": 200}),
                {"jsonrpc": "2.0", "method": "notifications/initialized"},
                call("b", ECHO, {"text": "b"}),
            ],
            {"jsonrpc": "2.0", "id": "s", "method": "subscriptions/listen", "params": listen},
            call(12, SLOW),
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 12}},
            extra=("--drain-timeout", "600"),
            # The last message has no newline: the bridge ends it for the broker.
            tail=orjson.dumps(call(13, "dev.kiki.service.getInfo")),
        )
    assert any(isinstance(line, list) for line in lines)  # the batch was answered as one
    answers = by_id(lines)
    assert answers[10]["result"]["structuredContent"]["text"] == "a"
    assert answers["b"]["result"]["structuredContent"]["text"] == "b"
    assert answers[13]["result"]["structuredContent"]["name"] == "tool-broker"
    assert 12 not in answers
    assert "unanswered" not in err


@LONG_CALLS
async def test_drain_gives_up_after_its_timeout(broker: Broker) -> None:
    path, _ = broker
    async with asyncio.timeout(30), make_provider(path).connect():
        lines, err = await bridge(path, call(1, SLOW), extra=("--drain-timeout", "0.1"))
    assert lines == []
    assert "1 request(s) still unanswered after 0.1 s" in err


def test_drain_timeout_must_be_a_duration(sockdir: Path) -> None:
    proc = kiki("mcp", "--socket", str(sockdir / "x"), "--drain-timeout", "-1", stdin="")
    assert proc.returncode == 2
    assert "--drain-timeout: must be 0 or more seconds" in proc.stderr
