"""The gateway's health answer as D-Bus values, and the bounds of its settings: no bus."""

from __future__ import annotations

import pydantic
import pytest

from kiki_dbus_gateway.config import GatewayConfig
from kiki_dbus_gateway.core import info_variants
from libkiki.constellation import GATEWAY_BUS_NAME

pytestmark = pytest.mark.unit

INFO = {
    "name": "dbus-gateway",
    "version": "1.2.3",
    "pid": 42,
    "uptimeSeconds": 7,
    "status": "ready",
    "statusText": "owning dev.kiki.Gateway on the session bus",
    "counters": {"requests": 3, "reloads": 1},
    "activated": False,  # not part of the D-Bus answer
    "libkiki": "0.1.0",
}


def test_each_field_has_the_type_busctl_reads() -> None:
    variants = info_variants(INFO)
    assert {k: (v.signature, v.value) for k, v in variants.items()} == {
        "name": ("s", "dbus-gateway"),
        "version": ("s", "1.2.3"),
        "pid": ("u", 42),
        "uptimeSeconds": ("t", 7),
        "status": ("s", "ready"),
        "statusText": ("s", "owning dev.kiki.Gateway on the session bus"),
        "counters": ("a{sx}", {"requests": 3, "reloads": 1}),
    }


def test_the_bus_name_is_the_declared_one_unless_set_to_a_valid_one() -> None:
    assert GatewayConfig().bus_name == GATEWAY_BUS_NAME
    assert GatewayConfig(bus_name="dev.kiki.Gateway2_x-y").bus_name == "dev.kiki.Gateway2_x-y"
    for bad in (
        "Gateway",
        "dev..kiki",
        "dev.kiki.",
        "dev.9kiki",
        ":1.42",
        "dev.kiki Gw",
        "a." * 200,
    ):
        with pytest.raises(pydantic.ValidationError):
            GatewayConfig(bus_name=bad)
