"""Idempotent retries (issue 18) against the real broker: a tools/call with
``_meta["dev.kiki/idempotencyKey"]`` runs its tool once per key, caller and arguments within the
broker's window; the provider counts how often it really ran."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kikitest.broker_lexicons import ECHO, LEXICONS
from libkiki.audit import read_entries, verify
from libkiki.errors import InvalidParams, Unavailable
from libkiki.tools import ToolCall, ToolClient, ToolProvider

pytestmark = pytest.mark.integration

Broker = tuple[Path, subprocess.Popen[bytes]]


class Counting:
    """A provider of ECHO that counts the times it ran, and can hold each run at a gate."""

    def __init__(self, path: Path, gated: bool = False) -> None:
        self.runs = 0
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.provider = ToolProvider(path, lexicons=LEXICONS)

        @self.provider.tool(ECHO)
        async def echo(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
            self.runs += 1
            self.started.set()
            await self.gate.wait()
            return {"text": f"{args['text']}#{self.runs}"}


def audited(sockdir: Path) -> list[dict[str, Any]]:
    log = sockdir / "state" / "audit.jsonl"
    assert list(verify(log)) == []
    return [e for e in read_entries(log) if e["tool"] == ECHO]


async def test_a_retried_call_runs_once_and_the_retry_is_audited_as_a_replay(
    broker: Broker, sockdir: Path
) -> None:
    path, _ = broker
    counting = Counting(path)
    async with asyncio.timeout(20), counting.provider.connect(), ToolClient(path) as client:
        first = await client.call(ECHO, {"text": "hi"}, idempotency_key="k1")
        again = await client.call(ECHO, {"text": "hi"}, idempotency_key="k1")
        # A new connection (a client that reconnected) is the same caller.
        async with ToolClient(path) as other:
            third = await other.call(ECHO, {"text": "hi"}, idempotency_key="k1")
        # Another key, or none, runs.
        fresh = await client.call(ECHO, {"text": "hi"}, idempotency_key="k2")
        unkeyed = await client.call(ECHO, {"text": "hi"})
    assert first == again == third == {"text": "hi#1"}
    assert (fresh, unkeyed) == ({"text": "hi#2"}, {"text": "hi#3"})
    assert counting.runs == 3
    assert [e["outcome"] for e in audited(sockdir)] == ["ok", "replay", "replay", "ok", "ok"]


async def test_concurrent_duplicates_run_once_and_all_get_its_answer(
    broker: Broker, sockdir: Path
) -> None:
    path, _ = broker
    counting = Counting(path, gated=True)
    async with asyncio.timeout(20), counting.provider.connect(), ToolClient(path) as client:
        first = asyncio.ensure_future(client.call(ECHO, {"text": "x"}, idempotency_key="same"))
        await counting.started.wait()  # the first call is running at the provider
        others = [
            asyncio.ensure_future(client.call(ECHO, {"text": "x"}, idempotency_key="same"))
            for _ in range(3)
        ]
        # They are at the broker once a call sent after them has been answered.
        await client.call("dev.kiki.service.getInfo")
        counting.gate.set()
        answers = await asyncio.gather(first, *others)
    assert answers == [{"text": "x#1"}] * 4
    assert counting.runs == 1
    outcomes = [e["outcome"] for e in audited(sockdir)]
    assert outcomes == ["ok", "replay", "replay", "replay"]


async def test_the_same_key_with_other_arguments_is_refused_and_audited(
    broker: Broker, sockdir: Path
) -> None:
    path, _ = broker
    counting = Counting(path)
    async with asyncio.timeout(20), counting.provider.connect(), ToolClient(path) as client:
        await client.call(ECHO, {"text": "a"}, idempotency_key="k")
        with pytest.raises(InvalidParams) as info:
            await client.call(ECHO, {"text": "b"}, idempotency_key="k")
        assert info.value.data["rule"] == "idempotencyKey"
        for bad in ("", "k" * 129):
            with pytest.raises(InvalidParams) as info:
                await client.call(ECHO, {"text": "a"}, idempotency_key=bad)
            assert info.value.data["rule"] == "idempotencyKey"
    assert counting.runs == 1
    assert [e["outcome"] for e in audited(sockdir)] == ["ok", "invalid", "invalid", "invalid"]


@pytest.mark.parametrize("broker", [{"KIKI_TOOL_BROKER_IDEMPOTENCY_WINDOW": "0.2"}], indirect=True)
async def test_after_the_window_a_retry_runs_again(broker: Broker) -> None:
    path, _ = broker
    counting = Counting(path)
    async with asyncio.timeout(20), counting.provider.connect(), ToolClient(path) as client:
        assert await client.call(ECHO, {"text": "w"}, idempotency_key="k") == {"text": "w#1"}
        await asyncio.sleep(0.4)  # past the configured window
        assert await client.call(ECHO, {"text": "w"}, idempotency_key="k") == {"text": "w#2"}
        assert await client.call(ECHO, {"text": "w"}, idempotency_key="k") == {"text": "w#2"}
    assert counting.runs == 2


@pytest.mark.parametrize(
    "broker", [{"KIKI_TOOL_BROKER_IDEMPOTENCY_MAX_ENTRIES": "2"}], indirect=True
)
async def test_past_the_entry_bound_the_oldest_answer_is_forgotten(broker: Broker) -> None:
    path, _ = broker
    counting = Counting(path)
    async with asyncio.timeout(20), counting.provider.connect(), ToolClient(path) as client:
        for key in ("a", "b", "c"):
            await client.call(ECHO, {"text": key}, idempotency_key=key)
        assert counting.runs == 3
        # "a" was evicted to keep two answers: its retry runs; "c" is still kept.
        assert await client.call(ECHO, {"text": "c"}, idempotency_key="c") == {"text": "c#3"}
        assert await client.call(ECHO, {"text": "a"}, idempotency_key="a") == {"text": "a#4"}
    assert counting.runs == 4


async def test_a_first_call_cancelled_before_it_answered_is_forgotten(
    broker: Broker, sockdir: Path
) -> None:
    path, _ = broker
    counting = Counting(path, gated=True)
    async with (
        asyncio.timeout(20),
        counting.provider.connect(),
        ToolClient(path) as client,
        ToolClient(path) as other,
    ):
        first = asyncio.ensure_future(
            client.call(ECHO, {"text": "c"}, idempotency_key="k", timeout=30)
        )
        await counting.started.wait()
        waiting = asyncio.ensure_future(other.call(ECHO, {"text": "c"}, idempotency_key="k"))
        await other.call("dev.kiki.service.getInfo")  # the duplicate is at the broker
        first.cancel()  # its caller gives up: the call is cancelled at the broker too
        with pytest.raises(Unavailable, match="retry"):
            await waiting
        counting.gate.set()
        assert await other.call(ECHO, {"text": "c"}, idempotency_key="k") == {"text": "c#2"}
    assert counting.runs == 2
    assert [e["outcome"] for e in audited(sockdir)] == ["cancelled", "cancelled", "ok"]
