"""Service configuration: parsed once in ``__main__``, from a TOML file and ``KIKI_*`` variables.

``load_config(Model, "tool-broker")`` reads ``/etc/kiki/tool-broker.toml`` when it exists (or
``$KIKI_CONFIG_DIR/tool-broker.toml``), then applies environment overrides named
``KIKI_TOOL_BROKER_<FIELD>`` (e.g. ``KIKI_TOOL_BROKER_MAX_LINE=65536``), and validates the result
with the frozen pydantic model. No ``.env`` files are read.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import pydantic

from libkiki.errors import KikiError
from libkiki.paths import config_dir

# Upper bounds of the common limits: a typo (a stray digit, seconds taken for milliseconds) fails
# at start as a configuration error (exit 78) instead of a service that can be made to hold
# unbounded connections, lines or requests.
MAX_CONNECTIONS = 1 << 16  # each one is a file descriptor
MAX_LINE = 1 << 26  # 64 MiB: a frame is buffered whole before it is parsed
MAX_IN_FLIGHT = 4096  # requests of one connection being handled at once
MAX_DRAIN_TIMEOUT = 300.0  # seconds; the units' TimeoutStopSec (20 s) ends a drain sooner


class ServiceConfig(pydantic.BaseModel):
    """Limits every service has; services subclass it to add their own fields."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    max_connections: int = pydantic.Field(default=256, ge=1, le=MAX_CONNECTIONS)
    # None: a quarter of max_connections. Root and the service's own uid are held only to the
    # total (see libkiki.admission).
    max_connections_per_user: int | None = pydantic.Field(default=None, ge=1, le=MAX_CONNECTIONS)
    max_line: int = pydantic.Field(default=1 << 20, ge=1024, le=MAX_LINE)
    max_in_flight: int = pydantic.Field(default=64, ge=1, le=MAX_IN_FLIGHT)
    drain_timeout: float = pydantic.Field(default=10.0, gt=0, le=MAX_DRAIN_TIMEOUT)


C = TypeVar("C", bound=pydantic.BaseModel)


def env_prefix(service: str) -> str:
    return "KIKI_" + service.upper().replace("-", "_") + "_"


def load_config(
    model: type[C], service: str, env: Mapping[str, str] | None = None, path: Path | None = None
) -> C:
    env = os.environ if env is None else env
    path = path or config_dir(env) / f"{service}.toml"
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise KikiError(f"{path}: {exc}") from exc
    prefix = env_prefix(service)
    for key, value in env.items():
        if key.startswith(prefix):
            data[key[len(prefix) :].lower()] = value
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise KikiError(f"invalid configuration for {service} ({path}): {problems}") from exc
