"""The connection for portal calls passing fds, opened at the first such call, against a bus
that stalls: a real Unix socket that accepts and never speaks (dbus-fast waits in its
authentication). Each call fails at its own deadline with the typed error, one waiting behind
another's connect too, and the next call connects again (here to a real bus, where a portal of
our own answers)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from kiki_dbus_gateway.portal import IFACE, PORTAL
from kiki_dbus_gateway.portal_bus import PortalBus
from kikitest import dbus_fixtures, until
from kikitest.dbus_fixtures import Stack
from libkiki.errors import Timeout

pytestmark = pytest.mark.integration

bare_bus = dbus_fixtures.bare_bus

DEADLINE = 1.0


class StalledBus:
    """A listening Unix socket that accepts connections and never answers on them."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="kiki-stall-", dir="/tmp"))
        self.path = self.dir / "bus"
        self.held: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"unix:path={self.path}"

    async def start(self) -> None:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.held.append(writer)  # kept open, never written to

        self.server = await asyncio.start_unix_server(accept, path=str(self.path))

    async def stop(self) -> None:
        for writer in self.held:
            writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
async def stalled() -> AsyncIterator[StalledBus]:
    bus = StalledBus()
    await bus.start()
    yield bus
    await bus.stop()


@pytest.fixture
async def fake_portal(bare_bus: Stack) -> AsyncIterator[MessageBus]:
    """Owns the portal's name; answers ``TrashFile`` with 1 (and closes the fd it got)."""
    bus = await MessageBus(bus_address=bare_bus.address, negotiate_unix_fd=True).connect()

    def serve(msg: Message) -> Message | None:
        if msg.message_type is not MessageType.METHOD_CALL or msg.member != "TrashFile":
            return None
        for fd in msg.unix_fds:
            os.close(fd)
        return Message.new_method_return(msg, "u", [1])

    bus.add_message_handler(serve)
    await bus.request_name(PORTAL)
    yield bus
    bus.disconnect()


async def trash(portal: PortalBus) -> list[object]:
    fd = os.open("/", os.O_PATH | os.O_CLOEXEC)
    try:
        return await portal.call(f"{IFACE}Trash", "TrashFile", "h", [0], [fd])
    finally:
        os.close(fd)


async def test_a_stalled_bus_fails_each_call_at_its_deadline_and_the_next_connects_again(
    bare_bus: Stack, stalled: StalledBus, fake_portal: MessageBus
) -> None:
    main = await MessageBus(bus_address=bare_bus.address).connect()
    address = [stalled.address]
    attempts: list[str] = []

    async def fd_bus() -> MessageBus:
        attempts.append(address[0])
        return await MessageBus(bus_address=address[0], negotiate_unix_fd=True).connect()

    portal = PortalBus(main, DEADLINE, DEADLINE, Counter(), fd_bus=fd_bus)
    await portal.start()
    try:
        first = asyncio.ensure_future(trash(portal))
        await until(lambda: stalled.held, "the stalled bus accepts the first call's connection")
        second = asyncio.ensure_future(trash(portal))  # waits behind the first's connect
        # The guard only turns a hang into a failure: each call ends at its own deadline.
        outcomes = await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), 30)
        assert [type(o) for o in outcomes] == [Timeout, Timeout], outcomes
        assert all(isinstance(o, Timeout) and o.data == {"error": "Timeout"} for o in outcomes)
        # Nothing is left holding the way: the next call connects again, to a bus that works.
        tried = len(attempts)
        address[0] = bare_bus.address
        assert await asyncio.wait_for(trash(portal), 30) == [1]
        assert attempts[tried:] == [bare_bus.address]
    finally:
        portal.stop()
        main.disconnect()
