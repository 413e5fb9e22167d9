"""Exactly once across a caller's crash, against the real broker: a keyed call
(``_meta["dev.kiki/idempotencyKey"]``) whose caller process is killed mid-call keeps waiting for
its provider, its answer is kept under the key, and the retry gets that answer (the tool ran
once); an unkeyed call, or one past ``max_detached_calls``, is cancelled at the provider."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kikitest.broker_lexicons import ECHO, LEXICONS
from libkiki.audit import read_entries, verify
from libkiki.tools import ToolCall, ToolClient, ToolProvider

pytestmark = pytest.mark.integration

Broker = tuple[Path, subprocess.Popen[bytes]]
LONG = {"KIKI_TOOL_BROKER_CALL_TIMEOUT": "60"}  # the gate, not the timeout, ends each run

# A relay that makes one call and is killed while it waits for the answer.
CALLER = """
import asyncio, sys
from libkiki.tools import ToolClient

async def main() -> None:
    async with ToolClient(sys.argv[1]) as client:
        key = sys.argv[3] or None
        await client.call(sys.argv[2], {"text": "x"}, idempotency_key=key, timeout=120)

asyncio.run(main())
"""


class Gated:
    """A provider of ECHO that counts its runs, holds each at a gate, and sees cancellations."""

    def __init__(self, path: Path) -> None:
        self.runs = 0
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.gate = asyncio.Event()
        self.provider = ToolProvider(path, lexicons=LEXICONS)

        @self.provider.tool(ECHO)
        async def echo(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
            self.runs += 1
            self.started.set()
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
            return {"text": f"{args['text']}#{self.runs}"}


async def killed_mid_call(path: Path, gated: Gated, key: str | None) -> None:
    """Run a caller process, wait until its call is running at the provider, and kill it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CALLER, str(path), ECHO, key or ""
    )
    await gated.started.wait()
    proc.kill()
    await proc.wait()


async def counter(client: ToolClient, name: str) -> int:
    info = await client.call("dev.kiki.service.getInfo")
    value = info["counters"].get(name, 0)
    assert isinstance(value, int)
    return value


async def until(client: ToolClient, name: str, value: int) -> None:
    """Poll getInfo until a counter reaches ``value`` (the broker saw the caller leave, ...)."""
    while await counter(client, name) != value:  # noqa: ASYNC110  (the broker has no event for it)
        await asyncio.sleep(0.02)


def audited(sockdir: Path) -> list[str]:
    log = sockdir / "state" / "audit.jsonl"
    assert list(verify(log)) == []
    return [e["outcome"] for e in read_entries(log) if e["tool"] == ECHO]


@pytest.mark.parametrize("broker", [LONG], indirect=True)
async def test_a_keyed_call_whose_caller_died_runs_once_and_its_retry_gets_the_answer(
    broker: Broker, sockdir: Path
) -> None:
    path, _ = broker
    gated = Gated(path)
    async with asyncio.timeout(30), gated.provider.connect(), ToolClient(path) as relay:
        await killed_mid_call(path, gated, "intent-1")
        await until(relay, "detached_running", 1)  # the caller is gone, the call is not
        gated.gate.set()
        await until(relay, "detached_running", 0)  # the provider answered: kept under the key
        retried = await relay.call(ECHO, {"text": "x"}, idempotency_key="intent-1")
        assert await counter(relay, "detached_calls") == 1
    assert retried == {"text": "x#1"}
    assert gated.runs == 1
    assert not gated.cancelled.is_set()
    assert audited(sockdir) == ["ok", "replay"]


@pytest.mark.parametrize("broker", [LONG], indirect=True)
async def test_a_retry_while_the_detached_call_runs_waits_for_its_answer(
    broker: Broker, sockdir: Path
) -> None:
    path, _ = broker
    gated = Gated(path)
    async with asyncio.timeout(30), gated.provider.connect(), ToolClient(path) as relay:
        await killed_mid_call(path, gated, "intent-2")
        await until(relay, "detached_running", 1)
        retry = asyncio.ensure_future(relay.call(ECHO, {"text": "x"}, idempotency_key="intent-2"))
        await relay.call("dev.kiki.service.getInfo")  # the retry is at the broker, joined
        assert not retry.done()
        gated.gate.set()
        assert await retry == {"text": "x#1"}
    assert gated.runs == 1
    assert audited(sockdir) == ["ok", "replay"]


@pytest.mark.parametrize("broker", [LONG], indirect=True)
async def test_an_unkeyed_call_whose_caller_died_is_cancelled(
    broker: Broker, sockdir: Path
) -> None:
    path, _ = broker
    gated = Gated(path)
    async with asyncio.timeout(30), gated.provider.connect(), ToolClient(path) as relay:
        await killed_mid_call(path, gated, None)
        await gated.cancelled.wait()  # the provider is told, as before
        assert await counter(relay, "detached_calls") == 0
    assert audited(sockdir) == ["cancelled"]


@pytest.mark.parametrize(
    "broker", [{**LONG, "KIKI_TOOL_BROKER_MAX_DETACHED_CALLS": "0"}], indirect=True
)
async def test_past_the_detached_limit_a_keyed_call_is_cancelled_and_its_key_forgotten(
    broker: Broker, sockdir: Path
) -> None:
    path, _ = broker
    gated = Gated(path)
    async with asyncio.timeout(30), gated.provider.connect(), ToolClient(path) as relay:
        await killed_mid_call(path, gated, "intent-3")
        await gated.cancelled.wait()
        assert await counter(relay, "detached_refused") == 1
        gated.gate.set()
        # It was cancelled at the provider and forgotten: the retry runs it.
        assert await relay.call(ECHO, {"text": "x"}, idempotency_key="intent-3") == {"text": "x#2"}
    assert gated.runs == 2
    assert audited(sockdir) == ["cancelled", "ok"]
