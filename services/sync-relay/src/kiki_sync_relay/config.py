"""The relay's settings: ``/etc/kiki/sync-relay.toml`` or ``KIKI_SYNC_RELAY_<FIELD>``."""

from __future__ import annotations

import pydantic

from libkiki.config import ServiceConfig
from libkiki.constellation import DEFAULT_RELAY_HOST, DEFAULT_RELAY_PORT


class RelayConfig(ServiceConfig):
    # Where it binds when started by hand (systemd and `kiki up` pass the socket instead); port 0
    # takes any free port, which the status line then names.
    host: str = pydantic.Field(default=DEFAULT_RELAY_HOST, min_length=1, max_length=253)
    port: int = pydantic.Field(default=DEFAULT_RELAY_PORT, ge=0, le=65535)
    # The largest WebSocket message it takes, in bytes.
    max_message: int = pydantic.Field(default=1 << 20, ge=1024, le=1 << 26)
