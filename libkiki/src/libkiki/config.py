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


class ServiceConfig(pydantic.BaseModel):
    """Limits every service has; services subclass it to add their own fields."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    max_connections: int = pydantic.Field(default=256, ge=1)
    # None: a quarter of max_connections. Root and the service's own uid are held only to the
    # total (see libkiki.admission).
    max_connections_per_user: int | None = pydantic.Field(default=None, ge=1)
    max_line: int = pydantic.Field(default=1 << 20, ge=1024)
    max_in_flight: int = pydantic.Field(default=64, ge=1)
    drain_timeout: float = pydantic.Field(default=10.0, gt=0)


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
