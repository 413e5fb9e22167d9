"""A service nobody runs yet, started by the bus: the gateway's "no owner" path
(``WellKnownName.resolve``: ``GetNameOwner`` says none, so ``StartServiceByName``, then ask
again) against a real dbus-daemon with a service directory of its own (the shared test bus has
none, so nothing is activated behind the other tests' backs)."""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from dbus_fast.aio import MessageBus

from kiki_dbus_gateway.dbus_calls import bus_method
from kiki_dbus_gateway.notify import NAME, Notifications
from kiki_dbus_gateway.notify_bus import NotifyBus
from kiki_dbus_gateway.portal import PORTAL
from kiki_dbus_gateway.portal_bus import PortalBus
from kikitest.dbus_fixtures import BUS_CONFIG, start_daemon
from libkiki.errors import Unavailable

pytestmark = pytest.mark.integration

SERVER = Path(__file__).with_name("activatable_notifications.py")


@pytest.fixture(scope="module")
def activating_bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A bus whose service directory starts the notification server on demand and has a
    portal whose program fails at once."""
    top = tmp_path_factory.mktemp("activation")
    services = top / "services"
    services.mkdir()
    (services / f"{NAME}.service").write_text(
        f"[D-BUS Service]\nName={NAME}\n"
        f"Exec={shlex.quote(sys.executable)} {shlex.quote(str(SERVER))}\n"
    )
    (services / f"{PORTAL}.service").write_text(
        f"[D-BUS Service]\nName={PORTAL}\nExec=/bin/false\n"
    )
    config = BUS_CONFIG.replace(
        "</busconfig>", f"  <servicedir>{services}</servicedir>\n</busconfig>"
    )
    with contextlib.ExitStack() as stack:
        yield start_daemon(stack, top / "bus", config)


@pytest.fixture
async def bus(activating_bus: str) -> AsyncIterator[MessageBus]:
    connection = await MessageBus(bus_address=activating_bus).connect()
    yield connection
    connection.disconnect()


async def test_a_server_with_no_owner_is_started_by_the_bus(bus: MessageBus) -> None:
    notify = NotifyBus(bus, Notifications(10), 10, Counter())
    await notify.start(monitor=False)
    try:
        assert notify.server.owner is None  # nobody has the name: the bus starts the server
        info = await notify.call("GetServerInformation")
        assert info == ["activated", "started by the session bus", "1", "1.2"]
        # the answer came from (and calls now go to) the connection the bus started
        (owner,) = await bus_method(bus, "GetNameOwner", "s", [NAME], 10)
        assert notify.server.owner == owner
    finally:
        await notify.stop()


async def test_a_service_that_fails_to_start_is_the_typed_absence(bus: MessageBus) -> None:
    portal = PortalBus(bus, 10, 10, Counter())
    await portal.start()
    try:
        with pytest.raises(Unavailable) as caught:
            await portal.call("org.freedesktop.portal.NetworkMonitor", "GetStatus")
        assert caught.value.data == {"error": "NoPortal"}
    finally:
        portal.stop()
