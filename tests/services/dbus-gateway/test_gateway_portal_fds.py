"""The portal calls that pass a file descriptor go on a connection of their own that negotiates
unix fds (the gateway's main connection does not: reading a message on one that does costs
dbus-fast three recvmsg calls rather than one recv), against the real xdg-desktop-portal."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from dbus_fast.aio import MessageBus

from kiki_dbus_gateway.portal import IFACE
from kiki_dbus_gateway.portal_bus import PortalBus
from kikitest import dbus_fixtures
from kikitest.dbus_fixtures import Portal, Stack
from libkiki.errors import Unavailable

pytestmark = pytest.mark.interop

gateway_stack = dbus_fixtures.gateway_stack
portal = dbus_fixtures.portal


async def trash(bus: PortalBus, path: Path) -> list[object]:
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        return await bus.call(f"{IFACE}Trash", "TrashFile", "h", [0], [fd])
    finally:
        os.close(fd)


async def test_a_call_passing_an_fd_goes_on_a_connection_that_negotiates_them(
    gateway_stack: Stack, portal: Portal
) -> None:
    main = await MessageBus(bus_address=gateway_stack.address).connect()  # no unix fds
    opened: list[MessageBus] = []

    async def fd_bus() -> MessageBus:
        bus = await MessageBus(bus_address=gateway_stack.address, negotiate_unix_fd=True).connect()
        opened.append(bus)
        return bus

    portal_bus = PortalBus(main, 10, 10, Counter(), fd_bus=fd_bus)
    await portal_bus.start()
    home = Path(gateway_stack.env["HOME"])
    try:
        await portal_bus.get_property(f"{IFACE}NetworkMonitor", "version")
        assert opened == []  # a call without fds stays on the main connection
        for name in ("fd-one.txt", "fd-two.txt"):
            (home / name).write_text(name)
            assert await trash(portal_bus, home / name) == [1]
            assert not (home / name).exists()
        assert len(opened) == 1  # opened at the first call passing an fd, then kept
        assert opened[0].connected
    finally:
        portal_bus.stop()
        main.disconnect()
    assert not opened[0].connected  # closed with the portal's glue


async def test_no_connection_for_fds_is_unavailable(gateway_stack: Stack, portal: Portal) -> None:
    main = await MessageBus(bus_address=gateway_stack.address).connect()

    async def fd_bus() -> MessageBus:
        raise OSError("refused")

    portal_bus = PortalBus(main, 10, 10, Counter(), fd_bus=fd_bus)
    await portal_bus.start()
    victim = Path(gateway_stack.env["HOME"]) / "fd-kept.txt"
    victim.write_text("kept")
    try:
        with pytest.raises(Unavailable, match="cannot connect to the session bus"):
            await trash(portal_bus, victim)
        assert victim.exists()
    finally:
        portal_bus.stop()
        main.disconnect()
