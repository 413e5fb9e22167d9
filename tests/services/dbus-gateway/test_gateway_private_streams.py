"""The gateway's private streams' registration against the real broker: declared private
(``privateSubscriptions``), served, and registered again when the broker comes back."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kiki_dbus_gateway.private_streams import PrivateStreams, Refused
from kikitest import until
from kikitest.broker_lexicons import TICKS, TICKS_LEXICON
from libkiki.backoff import RestartBackoff
from libkiki.streams_provider import StreamContext
from libkiki.tools import ToolClient

pytestmark = pytest.mark.integration

Broker = tuple[Path, subprocess.Popen[bytes]]


async def ticks(params: dict[str, Any], ctx: StreamContext) -> AsyncIterator[dict[str, Any]]:
    yield {"n": 1}
    await asyncio.Event().wait()  # until closed


def ticking(path: Path) -> PrivateStreams:
    private = PrivateStreams(path, [TICKS_LEXICON])
    private.subscription(TICKS)(ticks)
    return private


async def first_tick(path: Path) -> Any:
    async with ToolClient(path) as client:

        async def served() -> bool:
            return TICKS in {s["nsid"] for s in await client.streams()}

        await until(served, "the private stream is registered")
        async with client.subscribe(TICKS) as stream:
            return await anext(stream.messages())


async def test_served_as_private_and_registered_again_after_a_broker_restart(
    broker: Broker, spawn_service: Any
) -> None:
    path, proc = broker
    backoff = RestartBackoff(initial=0.05, maximum=0.2)
    task = asyncio.ensure_future(ticking(path).keep_registered(backoff))
    try:
        async with asyncio.timeout(30):
            assert await first_tick(path) == {"n": 1}
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 30) == 0
            again, notes = spawn_service("tool-broker")
            notes.wait_for("READY")
            try:
                assert await first_tick(path) == {"n": 1}
            finally:
                again.terminate()
                await asyncio.to_thread(again.wait, 30)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_refused_registration_is_raised(broker: Broker) -> None:
    path, _ = broker
    private = PrivateStreams(path)  # TICKS' lexicon neither sent nor installed
    private.subscription(TICKS)(ticks)
    with pytest.raises(Refused) as refused:
        await private.register_once()
    assert refused.value.error.jsonrpc_code == -32602
