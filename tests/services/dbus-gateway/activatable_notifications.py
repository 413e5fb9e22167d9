"""A notification server that the bus starts (D-Bus activation), for the gateway's tests.

Started by dbus-daemon from a ``.service`` file, it connects to the bus that started it
(``DBUS_STARTER_ADDRESS``: the activated process's environment is the daemon's, whose session
bus is not the test's), owns ``org.freedesktop.Notifications`` and answers
``GetServerInformation`` with its name ``activated`` and, as its vendor, how it was started
(``DBUS_STARTER_BUS_TYPE``). It exits when the bus goes.
"""

from __future__ import annotations

import asyncio
import os

from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface, method

NAME = "org.freedesktop.Notifications"
PATH = "/org/freedesktop/Notifications"


class Server(ServiceInterface):
    def __init__(self) -> None:
        super().__init__(NAME)

    @method(name="GetServerInformation")
    def get_server_information(self) -> "ssss":  # type: ignore[name-defined]  # noqa: F821, UP037
        started = os.environ.get("DBUS_STARTER_BUS_TYPE", "by hand")
        return ["activated", f"started by the {started} bus", "1", "1.2"]


async def main() -> None:
    bus = await MessageBus(bus_address=os.environ["DBUS_STARTER_ADDRESS"]).connect()
    bus.export(PATH, Server())
    await bus.request_name(NAME)
    await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    asyncio.run(main())
