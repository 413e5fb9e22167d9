"""The systemd side of the service contract, without dependencies.

* :class:`Notifier` -- the ``sd_notify`` datagram protocol (see sd_notify(3)): ``READY=1``,
  ``STATUS=``, ``WATCHDOG=1``, ``STOPPING=1``, ``RELOADING=1``, ``ERRNO=``. A no-op when
  ``$NOTIFY_SOCKET`` is unset, so a service started by hand behaves the same.
* :func:`listen_fds` -- socket activation (``LISTEN_PID``, ``LISTEN_FDS``, ``LISTEN_FDNAMES``,
  fds from 3), see sd_listen_fds(3).
* :func:`watchdog_interval` -- half of ``$WATCHDOG_USEC`` when it is meant for this process.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3


class Notifier:
    """Sends notify messages to ``$NOTIFY_SOCKET`` (path or ``@abstract``)."""

    def __init__(self, address: str | None = None) -> None:
        if address is None:
            address = os.environ.get("NOTIFY_SOCKET")
        self._address: str | None = None
        self._sock: socket.socket | None = None
        self._dropping = False
        if address:
            if address.startswith("@"):
                address = "\0" + address[1:]
            self._address = address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, **fields: str | int) -> bool:
        """Send one message; field names are upper-cased (``ready=1`` → ``READY=1``)."""
        if self._sock is None or self._address is None:
            return False
        payload = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        try:
            # Never block the service: a manager that stopped reading costs it this message
            # (systemd reads its notify socket at once; a harness might not).
            self._sock.sendto(payload, socket.MSG_DONTWAIT, self._address)
        except BlockingIOError:
            if not self._dropping:  # once per run of drops
                log.warning("sd_notify to %s dropped: the manager is not reading", self._address)
            self._dropping = True
            return False
        except OSError as exc:
            # The manager may have gone away; never let that take the service down.
            log.warning("sd_notify to %s failed: %s", self._address, exc)
            return False
        self._dropping = False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify(READY=1, **({"STATUS": status} if status else {}))

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def stopping(self, status: str | None = None) -> bool:
        return self.notify(STOPPING=1, **({"STATUS": status} if status else {}))

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets Type=notify-reload units tell this reload from an earlier one.
        return self.notify(RELOADING=1, MONOTONIC_USEC=time.monotonic_ns() // 1000)

    def errno(self, code: int) -> bool:
        return self.notify(ERRNO=code)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


@dataclass(frozen=True, slots=True)
class ListenFd:
    fd: int
    name: str


def listen_fds(
    env: MutableMapping[str, str] | None = None, *, unset: bool = True
) -> list[ListenFd]:
    """The sockets systemd (or ``kiki up``) passed us, in order, with their names.

    Returns ``[]`` unless ``$LISTEN_PID`` is this process. With ``unset`` the variables are removed
    so that children do not believe the fds are theirs. Each fd is marked close-on-exec.
    """
    env = os.environ if env is None else env
    try:
        if int(env.get("LISTEN_PID", "")) != os.getpid():
            return []
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    names = env.get("LISTEN_FDNAMES", "")
    name_list = names.split(":") if names else []
    if unset:
        for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(key, None)
    result = []
    for i in range(count):
        fd = SD_LISTEN_FDS_START + i
        os.set_inheritable(fd, False)
        result.append(ListenFd(fd, name_list[i] if i < len(name_list) else "unknown"))
    return result


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half the timeout), or ``None`` when not asked for."""
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return usec / 2_000_000 if usec > 0 else None
