"""Where Kiki keeps its sockets and state: decided here and nowhere else.

Order of precedence for the runtime directory (sockets):

1. ``$RUNTIME_DIRECTORY`` -- set by systemd from ``RuntimeDirectory=`` (``/run/kiki`` on a device);
   when the unit lists several directories, the first one;
2. ``$KIKI_RUNTIME_DIR`` -- what ``kiki up`` and developers set;
3. ``$XDG_RUNTIME_DIR/kiki`` for a user, or ``/run/kiki`` for root.

The state directory follows the same order with ``$STATE_DIRECTORY``, ``$KIKI_STATE_DIR`` and
``$XDG_STATE_HOME/kiki`` (``~/.local/state/kiki``) or ``/var/lib/kiki`` for root.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Final

from libkiki.constellation import SERVICES, spec
from libkiki.errors import NotFound


def _socket_file(service: str) -> str:
    name = spec(service).socket_file
    if name is None:
        raise NotFound(f"{service} has no socket file in libkiki.constellation")
    return name


# The socket files, read off libkiki.constellation (which says why the table lives there).
TOOLS_SOCKET: Final = _socket_file("tool-broker")
A11Y_SOCKET: Final = _socket_file("a11y-server")
SENSORS_SOCKET: Final = _socket_file("sensor-publisher")
UPDATER_SOCKET: Final = _socket_file("updater")

# Service name -> socket file, for every service that has one.
SOCKET_NAMES: Final[Mapping[str, str]] = MappingProxyType(
    {s.name: s.socket_file for s in SERVICES if s.socket_file is not None}
)


def _first(value: str) -> str:
    # systemd joins several RuntimeDirectory= entries with ':'.
    return value.split(":", 1)[0]


def runtime_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if value := env.get("RUNTIME_DIRECTORY"):
        return Path(_first(value))
    if value := env.get("KIKI_RUNTIME_DIR"):
        return Path(value)
    if os.geteuid() == 0:
        return Path("/run/kiki")
    xdg = env.get("XDG_RUNTIME_DIR") or f"/tmp/kiki-runtime-{os.geteuid()}"
    return Path(xdg) / "kiki"


def state_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if value := env.get("STATE_DIRECTORY"):
        return Path(_first(value))
    if value := env.get("KIKI_STATE_DIR"):
        return Path(value)
    if os.geteuid() == 0:
        return Path("/var/lib/kiki")
    xdg = env.get("XDG_STATE_HOME")
    if not xdg:
        try:
            xdg = str(Path.home() / ".local" / "state")
        except RuntimeError:  # no $HOME and no passwd entry (e.g. a DynamicUser= in a container)
            xdg = f"/tmp/kiki-state-{os.geteuid()}"
    return Path(xdg) / "kiki"


def config_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("KIKI_CONFIG_DIR") or "/etc/kiki")


def socket_path(name: str, env: Mapping[str, str] | None = None) -> Path:
    """Path of a socket by file name (``tools.sock``) or by service (``tool-broker``)."""
    return runtime_dir(env) / SOCKET_NAMES.get(name, name)
