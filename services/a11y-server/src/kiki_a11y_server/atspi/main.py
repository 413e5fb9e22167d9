"""``kiki-atspi-bridge``: publish every AT-SPI app of this session into Kiki's a11y tree.

Reads the accessibility bus's address from ``AT_SPI_BUS_ADDRESS`` or from ``org.a11y.Bus`` on
the session bus (``DBUS_SESSION_BUS_ADDRESS``), and publishes to ``a11y.sock`` in
``$KIKI_RUNTIME_DIR`` (or ``--socket``). Exits 0 when the session has no accessibility bus
(nothing to bridge), 1 when the bus goes away; tells systemd ``READY=1`` once every app present
at start is being mirrored.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from kiki_a11y_server import __version__
from kiki_a11y_server.atspi.app import Limits
from kiki_a11y_server.atspi.bridge import Bridge, accessibility_bus_address
from libkiki.errors import KikiError
from libkiki.logs import configure_logging
from libkiki.systemd import Notifier

log = logging.getLogger("kiki_atspi_bridge")


async def run(socket: Path | None, call_timeout: float, gone_after: float) -> int:
    try:
        address = await accessibility_bus_address(None)
    except (KikiError, OSError, ValueError) as exc:
        log.info("no accessibility bus in this session (%s): nothing to bridge", exc)
        return 0
    except Exception as exc:  # dbus-fast's own errors (no session bus, auth refused)
        log.info("no accessibility bus in this session (%s): nothing to bridge", exc)
        return 0
    limits = Limits(gone_after=gone_after)
    bridge = Bridge(address, socket, limits=limits, call_timeout=call_timeout)
    notifier = Notifier()
    task = asyncio.create_task(bridge.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    ready = asyncio.create_task(bridge.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if bridge.ready.is_set():
        notifier.ready(f"bridging {len(bridge.mirrors)} apps")
    ready.cancel()
    try:
        await task
    except asyncio.CancelledError:
        notifier.stopping()
        return 0
    except Exception as exc:
        log.error("the accessibility bus failed: %s", exc)
        return 1
    log.error("the accessibility bus went away")
    return 1


def main() -> None:
    parser = argparse.ArgumentParser(prog="kiki-atspi-bridge", description=__doc__)
    parser.add_argument("--socket", type=Path, help="the a11y-server's socket")
    parser.add_argument(
        "--timeout", type=float, default=2.0, help="seconds an app has to answer one call"
    )
    parser.add_argument(
        "--gone-after",
        type=float,
        default=10.0,
        help="seconds a stale (silent) app's tree stays before it is taken away",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = parser.parse_args()
    configure_logging()
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(run(args.socket, args.timeout, args.gone_after)))


if __name__ == "__main__":
    main()
