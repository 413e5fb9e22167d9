"""A stand-in for low-memory-monitor, the daemon GLib's ``GMemoryMonitor`` listens to on Linux,
for the portal tests: a real D-Bus service written with dbus-fast.

``python low_memory_monitor.py`` owns ``org.freedesktop.LowMemoryMonitor`` on the *system* bus
(``DBUS_SYSTEM_BUS_ADDRESS``), exports ``/org/freedesktop/LowMemoryMonitor`` with the interface
``org.freedesktop.LowMemoryMonitor`` and its signal ``LowMemoryWarning(y level)``, as the real
daemon does, and prints ``ready``. Each line on stdin is a level (0-255) to emit; ``quit``
ends it.
"""

from __future__ import annotations

import asyncio
import sys

from dbus_fast import BusType
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface, signal

NAME = "org.freedesktop.LowMemoryMonitor"
PATH = "/org/freedesktop/LowMemoryMonitor"


class LowMemoryMonitor(ServiceInterface):
    def __init__(self) -> None:
        super().__init__(NAME)

    @signal(name="LowMemoryWarning")
    def low_memory_warning(self, level: int) -> "y":  # type: ignore[name-defined]  # noqa: F821, UP037
        return level


async def main() -> None:
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    monitor = LowMemoryMonitor()
    bus.export(PATH, monitor)
    await bus.request_name(NAME)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if not line or line == "quit":
            break
        monitor.low_memory_warning(int(line))
    bus.disconnect()


if __name__ == "__main__":
    asyncio.run(main())
