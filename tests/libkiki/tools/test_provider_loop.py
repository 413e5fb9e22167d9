"""Libkiki's one registration loop (``ToolProvider.keep_registered``, issue 17) against
the real broker process: killed and started again, absent, refusing; and the services using it."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kikitest.broker_lexicons import ECHO, LEXICONS
from libkiki.backoff import RestartBackoff
from libkiki.tools import ToolCall, ToolClient, ToolProvider

pytestmark = pytest.mark.integration


@dataclass(slots=True)
class RecordingBackoff(RestartBackoff):
    """libkiki's back-off, recording each attempt's end and the wait it gave, and each
    registration: what the loop did, observed without a clock."""

    delays: list[float] = field(default_factory=list)
    registrations: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def ready(self, now: float) -> None:
        RestartBackoff.ready(self, now)
        self.registrations += 1
        self.changed.set()

    def exited(self, now: float) -> float:
        delay = RestartBackoff.exited(self, now)
        self.delays.append(delay)
        self.changed.set()
        return delay

    async def until(self, what: Any) -> None:
        async with asyncio.timeout(30):
            while not what():
                self.changed.clear()
                await self.changed.wait()


def echo_provider(path: Path) -> ToolProvider:
    provider = ToolProvider(path, lexicons=LEXICONS)

    @provider.tool(ECHO)
    async def echo(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        return {"text": args["text"]}

    return provider


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    async with asyncio.timeout(10):
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_the_provider_registers_again_after_the_broker_is_killed_and_restarted(
    broker: tuple[Path, subprocess.Popen[bytes]], spawn_service: Any
) -> None:
    path, proc = broker
    provider = echo_provider(path)
    backoff = RecordingBackoff(initial=0.05, maximum=0.2)
    task = asyncio.create_task(provider.keep_registered(backoff))
    try:
        await backoff.until(lambda: backoff.registrations == 1)
        async with ToolClient(path) as tools:
            assert await tools.call(ECHO, {"text": "one"}) == {"text": "one"}

        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # Lost, then refused at the dead socket for as long as there is no broker.
        await backoff.until(lambda: len(backoff.delays) >= 3)
        assert backoff.registrations == 1

        _, notes = spawn_service("tool-broker", extra_env={"KIKI_TOOL_BROKER_CALL_TIMEOUT": "2"})
        notes.wait_for("READY")
        await backoff.until(lambda: backoff.registrations == 2)
        async with ToolClient(path) as tools:
            assert await tools.call(ECHO, {"text": "two"}) == {"text": "two"}
    finally:
        await stop(task)
    # Cancelled while registered: the connection is closed, and the tool with it.
    assert provider._conn is None
    async with ToolClient(path) as tools, asyncio.timeout(10):
        while ECHO in {t["name"] for t in await tools.list()}:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_the_provider_backs_off_while_the_broker_is_absent(sockdir: Path) -> None:
    backoff = RecordingBackoff(initial=0.01, maximum=0.08)
    task = asyncio.create_task(echo_provider(sockdir / "tools.sock").keep_registered(backoff))
    try:
        await backoff.until(lambda: len(backoff.delays) >= 6)
    finally:
        await stop(task)
    # Each failed attempt waited twice the last, up to the maximum: not a fixed retry.
    assert backoff.delays[:6] == [0.01, 0.02, 0.04, 0.08, 0.08, 0.08]
    assert backoff.registrations == 0


async def test_a_refusal_is_logged_once_per_reason_and_the_provider_gets_in_when_freed(
    broker: tuple[Path, subprocess.Popen[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    path, _ = broker
    caplog.set_level("DEBUG", logger="libkiki.tools")
    holder, waiting = echo_provider(path), echo_provider(path)
    backoff = RecordingBackoff(initial=0.01, maximum=0.05)
    async with holder.connect():
        task = asyncio.create_task(waiting.keep_registered(backoff))
        await backoff.until(lambda: len(backoff.delays) >= 4)
        refusals = [
            r
            for r in caplog.records
            if r.name == "libkiki.tools" and "the broker refused to register" in r.getMessage()
        ]
        assert len(refusals) >= 4
        warned = [r for r in refusals if r.levelname == "WARNING"]
        assert len(warned) == 1, [r.getMessage() for r in warned]
        assert "already registered" in warned[0].getMessage()
    try:
        await backoff.until(lambda: backoff.registrations == 1)
    finally:
        await stop(task)


def test_a_service_is_refused_once_in_its_log_then_registers(
    broker: tuple[Path, subprocess.Popen[bytes]], spawn_service: Any
) -> None:
    """The a11y-server (a real process) keeps trying while another provider holds one of its
    tools, says why once, and registers when the tool is free."""
    path, _ = broker

    async def run() -> None:
        holder = ToolProvider(path)

        @holder.tool("dev.kiki.a11y.find")
        async def find(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
            return {"nodes": [], "total": 0}

        async with holder.connect():
            proc, notes = spawn_service("a11y-server", extra_env={"KIKI_LOG_LEVEL": "DEBUG"})
            notes.wait_for("READY")
            async with asyncio.timeout(30):
                while len(refused(proc)) < 3:  # noqa: ASYNC110 -- a log file, no event
                    await asyncio.sleep(0.05)
            lines = refused(proc)
            assert sum("WARNING" in line for line in lines) == 1, lines
        async with ToolClient(path) as tools, asyncio.timeout(30):
            while "dev.kiki.a11y.act" not in {t["name"] for t in await tools.list()}:  # noqa: ASYNC110
                await asyncio.sleep(0.05)

    asyncio.run(run())


def refused(proc: subprocess.Popen[bytes]) -> list[str]:
    assert proc.stderr is not None
    proc.stderr.seek(0)
    text = proc.stderr.read().decode()
    return [line for line in text.splitlines() if "the broker refused to register" in line]


def test_broker_tools_false_keeps_the_sensor_publisher_off_the_broker(
    sockdir: Path, start_publisher: Any
) -> None:
    """One setting switches a service's broker tools off: ``broker_tools`` (the publisher's
    ``broker_socket = ""`` did before, the a11y-server's ``broker_tools`` already)."""
    stand_in = socket.socket(socket.AF_UNIX)
    stand_in.bind(str(sockdir / "stand-in.sock"))
    stand_in.listen()
    stand_in.setblocking(False)
    with stand_in:
        pub = start_publisher(broker_tools=False, broker_socket=str(sockdir / "stand-in.sock"))
        assert pub.proc.poll() is None
        with pytest.raises(BlockingIOError):
            stand_in.accept()
