"""The server writes a call's audit line before its answer: a line that cannot be written (a
full disk) is the caller's answer, -32603, whichever way the call went. The broker runs in this
process (so that its audit log can sit on a full disk), on a real socket."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from kiki_tool_broker.audit import AuditLog
from kiki_tool_broker.config import BrokerConfig
from kiki_tool_broker.core import BrokerCore
from kiki_tool_broker.policy import Policy
from kiki_tool_broker.schemas import Catalog
from kiki_tool_broker.server import Broker
from kiki_tool_broker.tools import GET_INFO_TOOL
from kikitest.broker_lexicons import ECHO, LEXICONS, TICKS, TICKS_LEXICON
from libkiki.audit import read_entries
from libkiki.errors import PeerGone, WireError
from libkiki.rpc import serve_unix
from libkiki.service import ServiceContext
from libkiki.sockets import Listeners
from libkiki.systemd import Notifier
from libkiki.tools import ToolCall, ToolClient, ToolProvider

pytestmark = pytest.mark.integration


def full_disk(directory: Path) -> AuditLog:
    """An audit log whose writes fail as on a full disk: its file is /dev/full."""
    audit = AuditLog(directory)
    os.close(audit._fd)
    audit._fd = os.open("/dev/full", os.O_WRONLY)
    return audit


@asynccontextmanager
async def broker_on(sockdir: Path, audit: AuditLog) -> AsyncIterator[Path]:
    """The broker's method table served on ``sockdir/tools.sock``, auditing to ``audit``."""
    async with broker_serving(sockdir, audit) as (path, _):
        yield path


@asynccontextmanager
async def broker_serving(sockdir: Path, audit: AuditLog) -> AsyncIterator[tuple[Path, Broker]]:
    """:func:`broker_on`, with the broker (for its counters)."""
    config = BrokerConfig(call_timeout=5)
    ctx = ServiceContext("tool-broker", "0", Listeners([]), Notifier(""), config)
    core = BrokerCore(config, Catalog.load(), Policy(), version="0")
    broker = Broker(ctx, core, audit)
    core.register_own(broker.tools.names)
    path = sockdir / "tools.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        sock.listen()
        async with serve_unix(sock, broker.methods, on_disconnect=broker.connection_lost):
            yield path, broker
        await broker.forwarder.finish()


def echo_provider(path: Path, started: asyncio.Event | None = None) -> ToolProvider:
    provider = ToolProvider(path, lexicons=LEXICONS)

    @provider.tool(ECHO)
    async def echo(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        if started is not None:  # the call is with the provider: hold it there
            started.set()
            await asyncio.Event().wait()
        return {"text": args["text"]}

    return provider


async def calls(path: Path) -> list[Any]:
    """A call of the broker's own tool, of a provider's and of one whose provider leaves
    during it: each one's answer, or its error."""
    answers: list[Any] = []
    async with asyncio.timeout(20), ToolClient(path) as client:
        for tool, args in ((GET_INFO_TOOL, {}), (ECHO, {"text": "hi"})):
            async with echo_provider(path).connect():
                try:
                    answers.append(await client.call(tool, args))
                except Exception as exc:
                    answers.append(exc)
        started = asyncio.Event()
        leaving = echo_provider(path, started)
        async with leaving.connect():
            call = asyncio.ensure_future(client.call(ECHO, {"text": "bye"}))
            await started.wait()
        try:
            answers.append(await call)
        except Exception as exc:
            answers.append(exc)
    return answers


async def test_every_call_is_audited_before_it_is_answered(sockdir: Path, tmp_path: Path) -> None:
    audit = AuditLog(tmp_path)
    async with broker_on(sockdir, audit) as path:
        info, echoed, gone = await calls(path)
    assert info["name"] == "tool-broker"
    assert echoed == {"text": "hi"}
    assert isinstance(gone, PeerGone)
    outcomes = [(e["tool"], e["outcome"]) for e in read_entries(audit.path)]
    assert outcomes == [(GET_INFO_TOOL, "ok"), (ECHO, "ok"), (ECHO, "provider-gone")]
    audit.close()


async def test_an_audit_line_that_cannot_be_written_is_the_callers_answer(
    sockdir: Path, tmp_path: Path
) -> None:
    audit = full_disk(tmp_path)
    async with broker_on(sockdir, audit) as path:
        answers = await calls(path)
    for answer in answers:  # answered -32603, and logged
        assert isinstance(answer, WireError)
        assert answer.code == -32603
    audit.close()


async def joins(broker: Broker, count: int) -> None:
    """Until ``count`` duplicates have joined a keyed call running (the broker's own count)."""
    while broker.core.calls.idempotency.counters["joins"] < count:  # noqa: ASYNC110
        await asyncio.sleep(0.01)


async def test_a_duplicate_that_left_does_not_stop_the_others_being_answered(
    sockdir: Path, tmp_path: Path
) -> None:
    """Duplicates of a keyed call (same idempotency key) wait for its answer; the first of them
    has left when it comes. Its audit line cannot be written (a full disk): that is logged and
    counted, and the duplicate after it is still audited and answered (-32603), not left
    waiting."""
    audit = full_disk(tmp_path)
    started, gate = asyncio.Event(), asyncio.Event()
    provider = ToolProvider(sockdir / "tools.sock", lexicons=LEXICONS)

    @provider.tool(ECHO)
    async def echo(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        started.set()
        await gate.wait()
        return {"text": args["text"]}

    key = "k-1"
    async with (
        broker_serving(sockdir, audit) as (path, broker),
        asyncio.timeout(20),
        provider.connect(),
        ToolClient(path) as first,
        ToolClient(path) as leaving,
        ToolClient(path) as waiting,
    ):
        running = asyncio.ensure_future(first.call(ECHO, {"text": "x"}, idempotency_key=key))
        await started.wait()
        left = asyncio.ensure_future(leaving.call(ECHO, {"text": "x"}, idempotency_key=key))
        await joins(broker, 1)
        left.cancel()  # notifications/cancelled
        await leaving.connection.request("ping", {})  # read after it: the duplicate is gone
        waits = asyncio.ensure_future(waiting.call(ECHO, {"text": "x"}, idempotency_key=key))
        await joins(broker, 2)
        gate.set()
        answers = await asyncio.gather(running, waits, return_exceptions=True)
    for answer in answers:
        assert isinstance(answer, WireError)
        assert answer.code == -32603
    assert broker.ctx.counters["audit_errors"] == 2  # each duplicate's line
    audit.close()


async def test_a_call_whose_head_cannot_be_written_is_answered_and_kept(
    sockdir: Path, tmp_path: Path
) -> None:
    """The audit head's write fails after the call's line was written (a full copy-on-write
    disk; here the head is /dev/full): the line is recorded, so the call is answered, and its
    idempotency key keeps the answer: the retry is a replay, the tool ran once."""
    audit = AuditLog(tmp_path)
    os.close(audit._head_fd)
    audit._head_fd = os.open("/dev/full", os.O_WRONLY)
    runs = 0
    provider = ToolProvider(sockdir / "tools.sock", lexicons=LEXICONS)

    @provider.tool(ECHO)
    async def echo(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        nonlocal runs
        runs += 1
        return {"text": args["text"]}

    async with (
        broker_on(sockdir, audit) as path,
        asyncio.timeout(20),
        provider.connect(),
        ToolClient(path) as client,
    ):
        first = await client.call(ECHO, {"text": "x"}, idempotency_key="k-2")
        retry = await client.call(ECHO, {"text": "x"}, idempotency_key="k-2")
    assert first == retry == {"text": "x"}
    assert runs == 1
    outcomes = [e["outcome"] for e in read_entries(audit.path)]
    assert outcomes == ["ok", "replay"]
    audit.close()


async def test_a_subscribe_that_cannot_be_audited_fails_and_leaves_nothing(
    sockdir: Path, tmp_path: Path
) -> None:
    """As a call: a subscribe whose audit line cannot be written (a full disk) is answered
    -32603, and the subscription is undone: no subscription, topic, upstream or writer is left,
    for a provider's stream as for one of the broker's own."""
    audit = full_disk(tmp_path)
    provider = ToolProvider(sockdir / "tools.sock", lexicons=[TICKS_LEXICON])

    @provider.subscription(TICKS)
    async def ticks(params: dict[str, Any], stream: Any) -> AsyncIterator[dict[str, Any]]:
        yield {"n": 0}
        await asyncio.Event().wait()

    async with (
        broker_serving(sockdir, audit) as (path, broker),
        asyncio.timeout(20),
        provider.connect(),
        ToolClient(path) as client,
    ):
        for nsid in (TICKS, "dev.kiki.tools.subscribeProviders"):
            with pytest.raises(WireError) as refused:
                await client.connection.request("kiki/subscribe", {"nsid": nsid})
            assert refused.value.code == -32603
            counters = broker.info()["counters"]
            for gauge in ("subscriptions", "topics", "upstreams", "writers"):
                assert counters[f"stream_{gauge}"] == 0, (nsid, gauge)
            assert broker.streams.subs == {}
    audit.close()
