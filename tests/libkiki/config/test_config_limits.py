"""The common limits of every service's configuration: each has a floor and a ceiling.

A value past either is refused by ``load_config`` as a configuration error (what the runner turns
into exit 78), naming the field; the bound itself is accepted.
"""

from __future__ import annotations

import pytest

from libkiki.config import (
    MAX_CONNECTIONS,
    MAX_DRAIN_TIMEOUT,
    MAX_IN_FLIGHT,
    MAX_LINE,
    ServiceConfig,
    load_config,
)
from libkiki.errors import KikiError

pytestmark = pytest.mark.unit

# Each common limit: the least it takes, the most it takes, a value below and one above.
LIMITS = [
    ("max_connections", "1", str(MAX_CONNECTIONS), "0", str(MAX_CONNECTIONS + 1)),
    ("max_connections_per_user", "1", str(MAX_CONNECTIONS), "0", str(MAX_CONNECTIONS + 1)),
    ("max_line", "1024", str(MAX_LINE), "1023", str(MAX_LINE + 1)),
    ("max_in_flight", "1", str(MAX_IN_FLIGHT), "0", str(MAX_IN_FLIGHT + 1)),
    ("drain_timeout", "0.001", str(MAX_DRAIN_TIMEOUT), "0", str(MAX_DRAIN_TIMEOUT + 0.001)),
]
FIELDS = [limit[0] for limit in LIMITS]


def config(field: str, value: str) -> ServiceConfig:
    # As a unit would set it, with the config directory a path with no file in it.
    env = {"KIKI_CONFIG_DIR": "/nonexistent", f"KIKI_UPDATER_{field.upper()}": value}
    return load_config(ServiceConfig, "updater", env)


def test_every_common_limit_is_listed_here() -> None:
    assert sorted(FIELDS) == sorted(ServiceConfig.model_fields)


@pytest.mark.parametrize(("field", "least", "most", "_below", "_above"), LIMITS, ids=FIELDS)
def test_a_limit_takes_its_bounds(
    field: str, least: str, most: str, _below: str, _above: str
) -> None:
    assert getattr(config(field, least), field) == float(least)
    assert getattr(config(field, most), field) == float(most)


@pytest.mark.parametrize(("field", "_least", "_most", "below", "above"), LIMITS, ids=FIELDS)
def test_a_limit_past_its_bounds_is_a_configuration_error(
    field: str, _least: str, _most: str, below: str, above: str
) -> None:
    for value in (below, above):
        with pytest.raises(KikiError, match=rf"{field}: Input should be"):
            config(field, value)


def test_the_defaults_are_within_the_bounds() -> None:
    defaults = ServiceConfig()
    assert 1 <= defaults.max_connections <= MAX_CONNECTIONS
    assert defaults.max_connections_per_user is None
    assert 1024 <= defaults.max_line <= MAX_LINE
    assert 1 <= defaults.max_in_flight <= MAX_IN_FLIGHT
    assert 0 < defaults.drain_timeout <= MAX_DRAIN_TIMEOUT
