"""The gateway's settings: ``/etc/kiki/dbus-gateway.toml`` or ``KIKI_DBUS_GATEWAY_<FIELD>``."""

from __future__ import annotations

import pydantic

from libkiki.config import ServiceConfig
from libkiki.constellation import GATEWAY_BUS_NAME

# A well-known bus name as the D-Bus specification allows it: two or more dot-separated
# elements of [A-Za-z0-9_-], none starting with a digit, 255 characters at most. A name the bus
# would refuse is a configuration error at start rather than a failed RequestName.
BUS_NAME_PATTERN = r"^[A-Za-z_-][A-Za-z0-9_-]*(\.[A-Za-z_-][A-Za-z0-9_-]*)+$"


class GatewayConfig(ServiceConfig):
    # The name it owns; another lets a second gateway run beside the first (a test, a second
    # session), though `kiki status` and agents look for the declared one.
    bus_name: str = pydantic.Field(
        default=GATEWAY_BUS_NAME, max_length=255, pattern=BUS_NAME_PATTERN
    )
