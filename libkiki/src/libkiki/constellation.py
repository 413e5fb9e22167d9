"""The six services, their sockets and how each answers its health request.

One table shared by ``kiki up`` (what to start and which sockets to pass) and ``kiki status``
(where to ask). The systemd units in ``units/`` carry the same facts for a device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Health = Literal["jsonrpc", "a11y", "http", "dbus"]

DEFAULT_RELAY_HOST: Final = "127.0.0.1"
DEFAULT_RELAY_PORT: Final = 8765
GATEWAY_BUS_NAME: Final = "dev.kiki.Gateway"
GATEWAY_OBJECT_PATH: Final = "/dev/kiki/Gateway"
SERVICE_INTERFACE: Final = "dev.kiki.Service1"
GET_INFO: Final = "dev.kiki.service.getInfo"


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    health: Health
    # FileDescriptorName= of its socket (what LISTEN_FDNAMES carries); None: no listening socket.
    fdname: str | None = None
    # The socket's file name in the runtime directory; None for the relay's TCP socket.
    socket_file: str | None = None
    session_bus: bool = False

    @property
    def command(self) -> str:
        return f"kiki-{self.name}"


SERVICES: Final = (
    ServiceSpec("tool-broker", "jsonrpc", "tools", "tools.sock"),
    ServiceSpec("a11y-server", "a11y", "a11y", "a11y.sock"),
    ServiceSpec("sensor-publisher", "jsonrpc", "sensors", "sensors.sock"),
    ServiceSpec("dbus-gateway", "dbus", session_bus=True),
    ServiceSpec("sync-relay", "http", "relay"),
    ServiceSpec("updater", "jsonrpc", "updater", "updater.sock"),
)

BY_NAME: Final = {spec.name: spec for spec in SERVICES}
