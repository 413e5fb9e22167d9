"""The admission gate in process: what a flood of refused connections leaves in the log."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import Counter
from pathlib import Path

import pytest

from libkiki.admission import AdmissionLimits
from libkiki.rpc import Methods, RequestContext, serve_unix
from libkiki.servers import Gate
from libkiki.sockets import bind_unix

pytestmark = pytest.mark.integration

BOUND = 10.0


async def test_a_flood_of_refusals_is_logged_in_a_bounded_number_of_lines_and_summed_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    methods = Methods()

    @methods.method
    async def ping(ctx: RequestContext) -> str:
        return "pong"

    path = tmp_path / "rpc.sock"
    caplog.set_level(logging.INFO, logger="libkiki.servers")
    with bind_unix(path) as listener:
        async with serve_unix(listener, methods, max_connections=1) as server:
            holder = socket.socket(socket.AF_UNIX)
            holder.connect(os.fspath(path))
            for _ in range(60):
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.connect(os.fspath(path))
                    sock.settimeout(BOUND)
                    assert b"-32005" in await asyncio.to_thread(sock.recv, 4096)
            assert server.counters["connections_refused"] == 60
            holder.close()
        # Leaving: what the bucket held back is summed up in one line, not dropped.
    lines = [r.getMessage() for r in caplog.records if r.name == "libkiki.servers"]
    refusing = [line for line in lines if "refusing a connection" in line]
    summary = [line for line in lines if "more connections refused" in line]
    assert len(refusing) == 10
    assert len(summary) == 1
    assert summary[0].startswith("rpc.sock: 50 more connections refused")


async def test_a_connection_cancelled_before_its_first_step_gives_back_its_ticket_and_socket() -> (
    None
):
    # A server stopping right after accept() cancels the connection's task before it ran: the
    # coroutine's own finally never runs, so the gate must release and close for it.
    gate = Gate(AdmissionLimits.of(4), lambda error: b"", Counter(), "test.sock")
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    ran = False

    async def serve() -> None:
        nonlocal ran
        ran = True

    with theirs:
        ticket = gate.admit(ours, tg := asyncio.TaskGroup())
        assert ticket is not None
        assert gate.admission.live == 1
        async with tg:
            gate.start(tg, ours, ticket, serve()).cancel()
        assert not ran
        assert gate.admission.live == 0
        assert ours.fileno() == -1
        theirs.settimeout(BOUND)
        assert await asyncio.to_thread(theirs.recv, 1) == b""  # the peer sees the close
