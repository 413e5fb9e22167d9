"""The services' declarations, and the names derived from them."""

from __future__ import annotations

import pytest

from libkiki import constellation, paths
from libkiki.constellation import SERVICES, ServiceSpec, spec
from libkiki.errors import NotFound

pytestmark = pytest.mark.unit


def test_a_service_is_found_by_its_name_and_an_unknown_one_is_not() -> None:
    assert spec("updater").socket_file == "updater.sock"
    assert spec("sync-relay").command == "kiki-sync-relay"
    with pytest.raises(NotFound, match=r"no service 'updates'.*known: tool-broker"):
        spec("updates")


def test_the_socket_names_are_read_off_the_table() -> None:
    assert dict(paths.SOCKET_NAMES) == {
        s.name: s.socket_file for s in SERVICES if s.socket_file is not None
    }
    assert (
        spec("tool-broker").socket_file,
        spec("a11y-server").socket_file,
        spec("sensor-publisher").socket_file,
        spec("updater").socket_file,
    ) == (paths.TOOLS_SOCKET, paths.A11Y_SOCKET, paths.SENSORS_SOCKET, paths.UPDATER_SOCKET)
    assert paths.socket_path("updater", {"KIKI_RUNTIME_DIR": "/r"}).as_posix() == "/r/updater.sock"
    assert spec("sync-relay").address == (
        constellation.DEFAULT_RELAY_HOST,
        constellation.DEFAULT_RELAY_PORT,
    )
    gateway = spec("dbus-gateway")
    assert (
        gateway.bus_name,
        gateway.object_path,
    ) == (constellation.GATEWAY_BUS_NAME, constellation.GATEWAY_OBJECT_PATH)
    assert gateway.session_bus
    assert not spec("updater").session_bus


@pytest.mark.parametrize(
    "fields",
    [
        {"fdname": "x"},  # a FileDescriptorName= with no socket
        {"socket_file": "x.sock"},  # a socket with no FileDescriptorName=
        {"fdname": "x", "socket_file": "x.sock", "address": ("127.0.0.1", 1)},  # two sockets
        {"bus_name": "dev.kiki.X"},  # a bus name with no object path
    ],
)
def test_a_declaration_that_cannot_be_served_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"^x: "):
        ServiceSpec("x", "jsonrpc", **fields)  # type: ignore[arg-type]


def test_names_are_unique() -> None:
    for attribute in ("name", "fdname", "socket_file", "address", "bus_name"):
        values = [getattr(s, attribute) for s in SERVICES if getattr(s, attribute) is not None]
        assert len(values) == len(set(values)), attribute
