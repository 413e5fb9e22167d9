"""Kiki's services, each declared once: its name, command, socket, health channel and bus name.

Why the declaration lives here, in libkiki, rather than in each service's own package: the
programs that must find a service are not the service. ``ToolClient``, ``A11yClient`` and the
sensor client run inside an application's venv, which holds libkiki and no service at all;
``kiki status`` and ``kiki up`` ask or start every service whether or not its package is
importable. Were ``tools.sock`` declared in ``kiki_tool_broker``, a client would have to import
the broker (which the layering forbids: libkiki imports no service, and an app's venv does not
have it) or write the socket's name a second time, which is how the names came to be repeated.
So each service is one row of data below, and every other place derives from its row:

* :mod:`libkiki.paths`: ``TOOLS_SOCKET`` and the other socket names, and ``SOCKET_NAMES``;
* a service's ``serve()``: ``ctx.listen()`` (:class:`libkiki.service.ServiceContext`) takes the
  socket its row declares (the activated one by its ``FileDescriptorName=``, or its socket file
  or address bound by hand), so a service names nothing but the name it gives ``service_main``;
* ``service_main``'s ``--help`` (where the service listens), ``kiki up`` (what to start, which
  socket to pass it) and ``kiki status`` (where to ask, and how);
* the systemd units in ``units/``: they cannot import Python, so
  ``tests/units/test_unit_files.py`` checks every ``.socket`` and ``.service`` against this
  table (``ListenStream=``, ``FileDescriptorName=``, ``ExecStart=``, the unit names, what
  ``kiki.target`` wants) and fails on any difference.

A new service is a row here, its unit files and its package; the test above says what else
must agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

from libkiki.errors import NotFound

# How a service answers the health request: JSON-RPC dev.kiki.service.getInfo, the a11y wire's
# GetInfo, GET /healthz, or dev.kiki.Service1.GetInfo on the session bus.
Health = Literal["jsonrpc", "a11y", "http", "dbus"]

# The health request in each of its two RPC forms (the same for every service that has one).
SERVICE_INTERFACE: Final = "dev.kiki.Service1"
GET_INFO: Final = "dev.kiki.service.getInfo"


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One service. It listens on at most one socket: a file in the runtime directory
    (``socket_file``) or a TCP address (``address``, the default its configuration may move);
    ``fdname`` is that socket's ``FileDescriptorName=``. A service on the session bus owns
    ``bus_name`` and answers at ``object_path``."""

    name: str
    health: Health
    fdname: str | None = None
    socket_file: str | None = None
    address: tuple[str, int] | None = None
    bus_name: str | None = None
    object_path: str | None = None

    def __post_init__(self) -> None:
        listens = (self.socket_file is not None) + (self.address is not None)
        if listens > 1 or (listens == 1) != (self.fdname is not None):
            raise ValueError(f"{self.name}: one socket (a file or an address) with its fdname")
        if (self.bus_name is None) != (self.object_path is None):
            raise ValueError(f"{self.name}: a bus name goes with an object path")

    @property
    def command(self) -> str:
        """The program (``[project.scripts]``, ``ExecStart=``)."""
        return f"kiki-{self.name}"

    @property
    def unit(self) -> str:
        """The systemd units' name: ``<unit>.service``, and ``<unit>.socket`` if it listens."""
        return f"kiki-{self.name}"

    @property
    def session_bus(self) -> bool:
        """Whether it lives on the session bus: a user unit, and ``kiki up`` gives it a bus."""
        return self.bus_name is not None


SERVICES: Final = (
    ServiceSpec("tool-broker", "jsonrpc", fdname="tools", socket_file="tools.sock"),
    ServiceSpec("a11y-server", "a11y", fdname="a11y", socket_file="a11y.sock"),
    ServiceSpec("sensor-publisher", "jsonrpc", fdname="sensors", socket_file="sensors.sock"),
    ServiceSpec(
        "dbus-gateway", "dbus", bus_name="dev.kiki.Gateway", object_path="/dev/kiki/Gateway"
    ),
    ServiceSpec("sync-relay", "http", fdname="relay", address=("127.0.0.1", 8765)),
    ServiceSpec("updater", "jsonrpc", fdname="updater", socket_file="updater.sock"),
)

BY_NAME: Final[Mapping[str, ServiceSpec]] = MappingProxyType({s.name: s for s in SERVICES})


def spec(name: str) -> ServiceSpec:
    """The declaration of the service called ``name`` (``tool-broker``)."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise NotFound(
            f"no service {name!r} in libkiki.constellation (known: {', '.join(BY_NAME)})"
        ) from None


def _relay_address() -> tuple[str, int]:
    address = spec("sync-relay").address
    if address is None:
        raise NotFound("sync-relay has no address in libkiki.constellation")
    return address


def _gateway() -> tuple[str, str]:
    gateway = spec("dbus-gateway")
    if gateway.bus_name is None or gateway.object_path is None:
        raise NotFound("dbus-gateway has no bus name in libkiki.constellation")
    return gateway.bus_name, gateway.object_path


# Names other modules import, read off the table.
DEFAULT_RELAY_HOST, DEFAULT_RELAY_PORT = _relay_address()
GATEWAY_BUS_NAME, GATEWAY_OBJECT_PATH = _gateway()
