"""The gateway's settings: ``/etc/kiki/dbus-gateway.toml`` or ``KIKI_DBUS_GATEWAY_<FIELD>``.

Every field is bounded both ways, so that a typo cannot turn a limit into no limit: a value out
of range stops the service at start with the field named.
"""

from __future__ import annotations

import pydantic

from libkiki.config import ServiceConfig
from libkiki.constellation import GATEWAY_BUS_NAME
from libkiki.errors import ConfigError
from libkiki.principals import Principals

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
    # Offer dev.kiki.media.* on the broker's tools.sock (registering again whenever the broker
    # comes back); false: the gateway only follows the bus.
    broker_tools: bool = True
    # Seconds a player (or any bus peer) has to answer one call before it is a Timeout.
    call_timeout: float = pydantic.Field(default=2.0, gt=0, le=120)
    # Players followed at once; a further org.mpris.MediaPlayer2.* name is ignored (logged)
    # until one goes, so a process claiming names in a loop cannot grow the gateway.
    max_players: int = pydantic.Field(default=64, ge=1, le=4096)
    # dev.kiki.media.subscribePlayback: each stream sends at most one message per player per
    # interval (seconds); a player's changes merge meanwhile.
    events_interval: float = pydantic.Field(default=0.1, ge=0.01, le=60)
    # Serve dev.kiki.Tools1 (the broker's tools for D-Bus callers) on the gateway's object.
    bus_tools: bool = True
    # dev.kiki.notify.notify's app name when the call gives none.
    notify_app_name: str = pydantic.Field(default="Kiki", min_length=1, max_length=64)
    # Watch other apps' Notify calls (a second connection, BecomeMonitor) into a history of
    # this many, newest kept.
    notify_monitor: bool = True
    notify_history: int = pydantic.Field(default=50, ge=1, le=10_000)
    # Who besides the session's own user may read that history (libkiki.principals).
    notify_readers: list[str] = pydantic.Field(default_factory=list, max_length=256)
    # Serve dev.kiki.notify.subscribeObserved (others' notifications as events), registered as
    # a private stream: the broker lets the session's own user (its agent) and root follow it,
    # anyone else only through an allow rule naming it with access = ["subscribe"].
    notify_observe_stream: bool = True
    # Events a dev.kiki.notify stream holds for a slow broker before dropping the oldest.
    notify_max_events: int = pydantic.Field(default=256, ge=1, le=65_536)

    # Seconds a portal Request (OpenURI: a person may be choosing) waits for its Response.
    portal_request_timeout: float = pydantic.Field(default=120.0, gt=0, le=3600)

    @pydantic.field_validator("notify_readers")
    @classmethod
    def _readers(cls, value: list[str]) -> list[str]:
        try:
            Principals.parse(value, "notify_readers")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value
