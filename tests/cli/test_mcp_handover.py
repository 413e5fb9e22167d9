"""`kiki mcp` handing the host's pipes to the broker: that it does (and relays when told to,
or when the broker will not take them), and what it says when the broker goes away, stops, or
it is itself killed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from asyncio.subprocess import PIPE
from pathlib import Path
from typing import Any

import orjson
import pytest

from kikitest import VENV_BIN
from kikitest.broker_lexicons import ECHO, LEXICONS
from libkiki.tools import ToolCall, ToolClient, ToolProvider

pytestmark = pytest.mark.integration

Broker = tuple[Path, subprocess.Popen[bytes]]
GET_INFO = "dev.kiki.service.getInfo"
PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}


def make_provider(path: Path, started: asyncio.Event | None = None) -> ToolProvider:
    """ECHO answers after ``delay`` ms; ``started`` is set as each call begins."""
    provider = ToolProvider(path, lexicons=LEXICONS)

    @provider.tool(ECHO)
    async def echo(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        if started is not None:
            started.set()
        await asyncio.sleep(args.get("delay", 0) / 1000)
        return {"text": args["text"]}

    return provider


def call(rid: Any, name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    params = {"name": name, "arguments": arguments or {}}
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}


class Hosted:
    """A `kiki mcp` on pipes, as a host runs it."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, path: Path, *extra: str) -> Hosted:
        proc = await asyncio.create_subprocess_exec(
            str(VENV_BIN / "kiki"),
            *("mcp", "--socket", str(path), *extra),
            stdin=PIPE,
            stdout=PIPE,
            stderr=PIPE,
        )
        return cls(proc)

    async def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(orjson.dumps(message) + b"\n")
        line = await self.proc.stdout.readline()
        assert line, "the host's stdout ended"
        answer: dict[str, Any] = orjson.loads(line)
        return answer

    async def rest(self) -> bytes:
        """What is left on the host's stdout, to its end."""
        assert self.proc.stdout is not None
        return await self.proc.stdout.read()

    async def end(self) -> tuple[int, str]:
        """Close stdin; the exit status and stderr."""
        assert self.proc.stdin is not None
        assert self.proc.stderr is not None
        self.proc.stdin.close()
        err = await self.proc.stderr.read()
        return await self.proc.wait(), err.decode()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def sessions_open(path: Path) -> int:
    async with ToolClient(path) as tools:
        info = await tools.call(GET_INFO, {})
    count: int = info["counters"]["stdio_sessions_open"]
    return count


async def wait_sessions(path: Path, want: int) -> None:
    while True:
        if await sessions_open(path) == want:
            return
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(("extra", "handed"), [((), 1), (("--relay",), 0)])
async def test_pipes_are_handed_to_the_broker_unless_relaying(
    broker: Broker, extra: tuple[str, ...], handed: int
) -> None:
    path, _ = broker
    async with asyncio.timeout(30), make_provider(path).connect():
        host = await Hosted.start(path, *extra)
        try:
            answer = await host.ask(call(2, ECHO, {"text": "hi"}))
            assert answer["result"]["structuredContent"] == {"text": "hi"}
            assert await sessions_open(path) == handed
            assert await host.end() == (0, "")
        finally:
            await host.kill()
        await wait_sessions(path, 0)


async def test_the_broker_going_away_is_said(broker: Broker) -> None:
    path, proc = broker
    async with asyncio.timeout(30):
        host = await Hosted.start(path)
        try:
            assert (await host.ask(PING))["result"] == {}
            proc.kill()
            proc.wait(timeout=10)
            assert await host.rest() == b""  # the host sees its server's stdout end
            status, err = await host.end()
        finally:
            await host.kill()
    assert status == 1
    assert err == "kiki mcp: the tool broker went away\n"


async def test_a_broker_that_stops_answers_what_it_was_asked_first(broker: Broker) -> None:
    # Stopping, the broker lets the calls in flight finish (its drain_timeout), the host's
    # too, and then kiki mcp says the broker stopped.
    path, proc = broker
    started = asyncio.Event()
    async with asyncio.timeout(30), make_provider(path, started).connect():
        host = await Hosted.start(path)
        try:
            assert (await host.ask(PING))["result"] == {}
            assert host.proc.stdin is not None
            host.proc.stdin.write(orjson.dumps(call(2, ECHO, {"text": "x", "delay": 500})) + b"\n")
            await started.wait()  # the call has reached the provider
            proc.send_signal(signal.SIGTERM)
            [line] = (await host.rest()).splitlines()
            status, err = await host.end()
        finally:
            await host.kill()
    assert orjson.loads(line)["result"]["structuredContent"] == {"text": "x"}
    assert status == 1
    assert err == "kiki mcp: the tool broker stopped\n"
    assert await asyncio.to_thread(proc.wait, 30) == 0


@pytest.mark.parametrize(
    "broker",
    [{"KIKI_TOOL_BROKER_DRAIN_TIMEOUT": "0.5", "KIKI_TOOL_BROKER_CALL_TIMEOUT": "60"}],
    indirect=True,
)
@pytest.mark.parametrize(
    ("extra", "said"),
    [
        ((), "kiki mcp: the tool broker went away\n"),
        (("--relay",), "kiki mcp: the tool broker went away; 1 request(s) unanswered\n"),
    ],
)
async def test_a_broker_that_stops_cuts_a_call_longer_than_its_drain(
    broker: Broker, extra: tuple[str, ...], said: str
) -> None:
    # The host keeps stdin open and its call would take 60 s: after drain_timeout the broker
    # ends the session (the host's stdout ends, the call unanswered) and exits, handed over or
    # relayed alike; kiki mcp says so.
    path, proc = broker
    started = asyncio.Event()
    async with asyncio.timeout(20), make_provider(path, started).connect():
        host = await Hosted.start(path, *extra)
        try:
            assert (await host.ask(PING))["result"] == {}
            assert host.proc.stdin is not None
            host.proc.stdin.write(
                orjson.dumps(call(2, ECHO, {"text": "x", "delay": 60_000})) + b"\n"
            )
            await started.wait()
            proc.send_signal(signal.SIGTERM)
            assert await host.rest() == b""
            status, err = await host.end()
            assert await asyncio.to_thread(proc.wait, 20) == 0
        finally:
            await host.kill()
    assert (status, err) == (1, said)


async def test_a_killed_kiki_mcp_ends_its_session(broker: Broker) -> None:
    path, _ = broker
    async with asyncio.timeout(30):
        host = await Hosted.start(path)
        try:
            assert (await host.ask(PING))["result"] == {}
            assert await sessions_open(path) == 1
            host.proc.kill()
            await host.proc.wait()
            # The broker let go of the host's stdout: nobody holds it now.
            assert await host.rest() == b""
        finally:
            await host.kill()
        await wait_sessions(path, 0)


async def sessions_served(path: Path) -> int:
    """How many sessions the broker has served on handed-over pipes so far."""
    async with ToolClient(path) as tools:
        info = await tools.call(GET_INFO, {})
    count: int = info["counters"].get("stdio_sessions", 0)
    return count


async def test_the_hosts_pipes_stay_blocking_after_a_session(broker: Broker) -> None:
    # O_NONBLOCK belongs to an open file description, which the host shares with kiki mcp (and
    # a shell after it, say): the broker is handed descriptions of its own, so the host's stay
    # blocking. The test holds the same descriptions as kiki mcp's stdin and stdout.
    path, _ = broker
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    try:
        before = await sessions_served(path)
        proc = await asyncio.create_subprocess_exec(
            str(VENV_BIN / "kiki"),
            *("mcp", "--socket", str(path)),
            stdin=stdin_r,
            stdout=stdout_w,
            stderr=PIPE,
        )
        try:
            async with asyncio.timeout(30):
                os.write(stdin_w, orjson.dumps(PING) + b"\n")
                answer = await asyncio.to_thread(os.read, stdout_r, 1 << 16)
                assert orjson.loads(answer)["result"] == {}
                os.close(stdin_w)
                stdin_w = -1
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert await sessions_served(path) == before + 1  # handed over, not relayed
        assert os.get_blocking(stdin_r)
        assert os.get_blocking(stdout_w)
    finally:
        for fd in (stdin_r, stdin_w, stdout_r, stdout_w):
            if fd >= 0:
                os.close(fd)


async def test_a_host_that_closes_stdout_ends_the_session_quietly(broker: Broker) -> None:
    # The host is done reading: the answer that finds no reader ends the session, and kiki mcp
    # exits as a relay does when its stdout is closed (0, nothing said).
    path, _ = broker
    stdout_r, stdout_w = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            str(VENV_BIN / "kiki"),
            *("mcp", "--socket", str(path)),
            stdin=PIPE,
            stdout=stdout_w,
            stderr=PIPE,
        )
    finally:
        os.close(stdout_w)
    try:
        async with asyncio.timeout(30):
            assert proc.stdin is not None
            assert proc.stderr is not None
            proc.stdin.write(orjson.dumps(PING) + b"\n")
            ready = await asyncio.to_thread(os.read, stdout_r, 1 << 16)
            assert orjson.loads(ready)["result"] == {}
            os.close(stdout_r)
            stdout_r = -1
            proc.stdin.write(orjson.dumps(PING) + b"\n")
            await proc.stdin.drain()
            err = await proc.stderr.read()
            status = await proc.wait()
    finally:
        if stdout_r >= 0:
            os.close(stdout_r)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert (status, err) == (0, b"")
    await wait_sessions(path, 0)


@pytest.mark.parametrize("broker", [{"KIKI_TOOL_BROKER_MAX_STDIO_SESSIONS": "1"}], indirect=True)
async def test_a_broker_with_no_session_left_is_relayed_to(broker: Broker) -> None:
    path, _ = broker
    async with asyncio.timeout(30):
        first = await Hosted.start(path)
        second = await Hosted.start(path)
        try:
            assert (await first.ask(PING))["result"] == {}
            assert (await second.ask(PING))["result"] == {}
            assert await sessions_open(path) == 1
            assert await first.end() == (0, "")
            assert await second.end() == (0, "")
        finally:
            await first.kill()
            await second.kill()


async def test_an_older_broker_is_relayed_to(sockdir: Path) -> None:
    # A broker without kiki/serveStdio answers -32601; kiki mcp relays on the same connection.
    path = sockdir / "old.sock"
    seen: list[Any] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            message = orjson.loads(line)
            seen.append(message["method"])
            if message["method"] == "ping":
                answer = {"jsonrpc": "2.0", "id": message["id"], "result": {}}
            else:
                error = {"code": -32601, "message": "Method not found"}
                answer = {"jsonrpc": "2.0", "id": message["id"], "error": error}
            writer.write(orjson.dumps(answer) + b"\n")
        writer.close()

    server = await asyncio.start_unix_server(serve, str(path))
    async with server, asyncio.timeout(30):
        host = await Hosted.start(path)
        try:
            assert await host.ask(PING) == {"jsonrpc": "2.0", "id": 1, "result": {}}
            assert await host.end() == (0, "")
        finally:
            await host.kill()
    assert seen == ["kiki/serveStdio", "ping"]


def test_the_wire_names_are_the_brokers() -> None:
    from kiki_cli import mcp as cli
    from kiki_tool_broker import protocol

    assert (cli.SERVE_STDIO, cli.STDIO_SEND, cli.STDIO_STARTED) == (
        protocol.SERVE_STDIO,
        protocol.STDIO_SEND,
        protocol.STDIO_STARTED,
    )


def test_only_two_distinct_pipes_are_handed_over() -> None:
    from kiki_cli.mcp import _pipes

    a_r, a_w = os.pipe()
    b_r, b_w = os.pipe()
    null = os.open(os.devnull, os.O_RDWR)
    try:
        assert _pipes(a_r, b_w)
        assert not _pipes(a_r, a_w)  # one pipe, both ways
        assert not _pipes(null, b_w)
        assert not _pipes(a_r, null)
    finally:
        for fd in (a_r, a_w, b_r, b_w, null):
            os.close(fd)
