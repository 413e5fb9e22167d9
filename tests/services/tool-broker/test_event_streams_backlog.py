"""Event streams against peers that do not read, with the broker in this process (its state is
looked at directly) on a real socket: a provider that never reads costs a bounded backlog and
is disconnected past it, one connection's full queues are written in turn, and an audit log on
a full disk leaves the fan-out whole."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from kiki_tool_broker import upstreams
from kiki_tool_broker.audit import AuditLog
from kiki_tool_broker.config import BrokerConfig
from kiki_tool_broker.core import BrokerCore
from kiki_tool_broker.policy import Policy
from kiki_tool_broker.schemas import Catalog
from kiki_tool_broker.server import Broker
from kikitest import until
from kikitest.broker_fixtures import RawPeer
from kikitest.broker_lexicons import TICKS, TICKS_LEXICON
from libkiki.errors import WireError
from libkiki.rpc import serve_unix
from libkiki.service import ServiceContext
from libkiki.sockets import Listeners
from libkiki.systemd import Notifier
from libkiki.tools import Event, StreamContext, ToolClient, ToolProvider

pytestmark = pytest.mark.integration


@asynccontextmanager
async def broker_on(sockdir: Path, audit: AuditLog) -> AsyncIterator[tuple[Path, Broker]]:
    """The broker's method table served on ``sockdir/tools.sock``, auditing to ``audit``."""
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


def ticks_provider(path: Path, closed: list[int]) -> ToolProvider:
    """A provider of TICKS whose generators wait (they are fed by hand); ``closed`` counts
    the generators that ended."""
    provider = ToolProvider(path, lexicons=[TICKS_LEXICON])

    @provider.subscription(TICKS)
    async def ticks(params: dict[str, Any], stream: StreamContext) -> AsyncIterator[dict[str, Any]]:
        try:
            yield {"n": 0}
            await asyncio.Event().wait()
        finally:
            closed.append(1)

    return provider


async def register_and_stop_reading(path: Path) -> socket.socket:
    """A provider of TICKS on a raw socket that, once registered, never reads again."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, str(path))
    register = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "kiki/registerTools",
        "params": {"tools": [], "lexicons": [TICKS_LEXICON], "subscriptions": [TICKS]},
    }
    await loop.sock_sendall(sock, orjson.dumps(register) + b"\n")
    answer = orjson.loads(await loop.sock_recv(sock, 65536))
    assert "result" in answer, answer
    return sock


async def test_a_provider_that_never_reads_costs_a_bounded_backlog(
    sockdir: Path, tmp_path: Path
) -> None:
    audit = AuditLog(tmp_path)
    async with broker_on(sockdir, audit) as (path, broker), await RawPeer.open(path) as client:
        provider = await register_and_stop_reading(path)
        [(pid, registered)] = [
            (i, p) for i, p in broker.core.stream_providers.items() if p.connection is not None
        ]
        conn = registered.connection
        assert conn is not None

        async def cycles(n: int) -> None:
            for _ in range(n):
                answer = await client.request(
                    "kiki/subscribe", {"nsid": TICKS, "params": {"room": "x"}}
                )
                await client.request("kiki/unsubscribe", {"subscription": answer["subscription"]})

        async with asyncio.timeout(120):
            await cycles(1500)  # enough to fill the socket and the transport's buffer
            assert conn.write_buffer_size  # it is not read
            tasks, buffered = len(asyncio.all_tasks()), conn.write_buffer_size
            backlog = len(broker.streams.upstreams.backlogs.get(pid, ()))
            await cycles(3000)
        # Each cycle after the transport filled up cost nothing that stays: its openStream
        # was never written, so neither a cancellation nor a closeStream follows it.
        assert len(asyncio.all_tasks()) <= tasks + 2
        assert conn.write_buffer_size == buffered
        assert len(broker.streams.upstreams.backlogs.get(pid, ())) <= backlog
        assert broker.ctx.counters["stream_providers_dropped"] == 0
        provider.close()
    audit.close()


async def test_a_provider_past_its_backlog_bound_is_disconnected(
    sockdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upstreams, "MAX_PROVIDER_BACKLOG", 8)
    audit = AuditLog(tmp_path)
    async with broker_on(sockdir, audit) as (path, broker), await RawPeer.open(path) as client:
        provider = await register_and_stop_reading(path)
        [(pid, registered)] = [
            (i, p) for i, p in broker.core.stream_providers.items() if p.connection is not None
        ]
        conn = registered.connection
        assert conn is not None
        async with asyncio.timeout(120):
            while True:  # until the transport is full: an openStream then waits in the backlog
                answer = await client.request(
                    "kiki/subscribe", {"nsid": TICKS, "params": {"room": "fill"}}
                )
                backlog = broker.streams.upstreams.backlogs.get(pid)
                queued = backlog is not None and bool(backlog.opens)
                await client.request("kiki/unsubscribe", {"subscription": answer["subscription"]})
                if queued:
                    break
            # Topics opened now wait in the backlog: past its bound the provider is dropped.
            for room in range(9):  # the ninth is one over
                await client.request(
                    "kiki/subscribe", {"nsid": TICKS, "params": {"room": f"r{room}"}}
                )
            await until(lambda: conn.closed, "the provider disconnected")
            assert broker.ctx.counters["stream_providers_dropped"] == 1
            await until(lambda: pid not in broker.core.stream_providers, "the provider forgotten")
            status = await client.note("kiki/streamStatus")  # its subscribers wait
            assert status["state"] == "waiting"
        provider.close()
    audit.close()


async def test_full_queues_of_one_connection_are_written_in_turn(
    sockdir: Path, tmp_path: Path
) -> None:
    audit = AuditLog(tmp_path)
    closed: list[int] = []
    loop = asyncio.get_running_loop()
    async with broker_on(sockdir, audit) as (path, broker), ticks_provider(path, closed).connect():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await loop.sock_connect(sock, str(path))
            for i in range(6):
                request = {
                    "jsonrpc": "2.0",
                    "id": i + 1,
                    "method": "kiki/subscribe",
                    "params": {"nsid": TICKS, "params": {"room": f"r{i}"}},
                }
                await loop.sock_sendall(sock, orjson.dumps(request) + b"\n")
            fanout = broker.core.streams
            await until(lambda: len(fanout.upstreams()) == 6, "six upstreams")
            await until(lambda: fanout.counters["published"] == 6, "each one's first tick")
            # Every queue filled at once, before the writer runs: it then writes them in turn.
            for n in range(1, 400):
                for upstream, (pid, _, _) in fanout.upstreams().items():
                    broker.streams.carry(fanout.publish(pid, upstream, {"n": n}))
            first: list[int] = []
            pending = b""
            async with asyncio.timeout(20):
                while len(first) < 200:
                    chunk = await loop.sock_recv(sock, 4096)
                    assert chunk
                    *lines, pending = (pending + chunk).split(b"\n")
                    for line in lines:
                        obj = orjson.loads(line)
                        for msg in obj if isinstance(obj, list) else [obj]:
                            params = msg.get("params", {})
                            # After each one's first tick (written before the queues filled):
                            if msg.get("method") == "kiki/lost" or params.get("seq", 0) > 1:
                                first.append(params["subscription"])
        # Round robin, eight items each: all six within the first 200 notifications.
        assert len(set(first[:200])) == 6, sorted(set(first[:200]))
    audit.close()


async def test_an_audit_log_on_a_full_disk_leaves_the_streams_whole(
    sockdir: Path, tmp_path: Path
) -> None:
    """The disk fills while a subscription runs: its end's audit line cannot be written, which
    is logged and counted, and the end stands (the upstream closed at the provider). A
    subscribe then is refused, -32603, and leaves no upstream behind."""
    audit = AuditLog(tmp_path)
    closed: list[int] = []
    async with (
        broker_on(sockdir, audit) as (path, broker),
        ticks_provider(path, closed).connect(),
        ToolClient(path) as client,
    ):
        async with asyncio.timeout(20):
            async with client.subscribe(TICKS, room="a") as stream:
                async for item in stream:
                    if isinstance(item, Event):
                        assert item.message == {"n": 0}
                        break
                os.close(audit._fd)
                audit._fd = os.open("/dev/full", os.O_WRONLY)
            # Unsubscribed (its audit line failed): the upstream closed at the provider.
            await until(lambda: closed == [1], "the generator closed")
            assert broker.ctx.counters["audit_errors"] == 1
            with pytest.raises(WireError) as refused:
                await client.connection.request("kiki/subscribe", {"nsid": TICKS})
            assert refused.value.code == -32603
        assert not broker.core.streams.upstreams()
        assert not broker.core.streams.subscriptions()
    audit.close()
