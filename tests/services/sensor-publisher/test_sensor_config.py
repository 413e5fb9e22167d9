"""The sensor publisher's settings: each bounded, and those that changed meaning refused rather
than reinterpreted."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest
from pydantic.fields import FieldInfo

from kiki_sensor_publisher.config import SensorConfig
from libkiki.config import ServiceConfig

pytestmark = pytest.mark.unit


def test_an_empty_broker_socket_is_refused_rather_than_taken_for_the_default() -> None:
    # broker_socket = "" once switched the broker tools off; broker_tools = false does now.
    with pytest.raises(pydantic.ValidationError, match="broker_tools = false"):
        SensorConfig(broker_socket="")
    assert SensorConfig().broker_socket is None
    assert (
        SensorConfig(broker_socket="/run/kiki/tools.sock").broker_socket == "/run/kiki/tools.sock"
    )


def _bounds(info: FieldInfo) -> set[str]:
    return {type(m).__name__ for m in info.metadata}


# Settings whose type bounds them: a flag, and where the kernel sources read.
UNBOUNDED_BY_TYPE = {"broker_tools", "proc_root", "sys_root"}


def test_every_setting_of_the_publisher_has_bounds() -> None:
    own = set(SensorConfig.model_fields) - set(ServiceConfig.model_fields)
    assert own >= {"imu_hz", "read_policy", "max_wakeups_hz"}
    for name in sorted(own - UNBOUNDED_BY_TYPE):
        info = SensorConfig.model_fields[name]
        bounds = _bounds(info)
        if info.annotation in (int, float):
            assert bounds & {"Ge", "Gt"}, name
            assert bounds & {"Le", "Lt"}, name
        else:  # a string, a list or a table: at most so long
            assert "MaxLen" in bounds, name


@pytest.mark.parametrize(
    "setting",
    [
        {"imu_hz": float("nan")},
        {"imu_hz": 20_001},
        {"max_wakeups_hz": float("inf")},
        {"max_external": 4097},
        {"max_external_per_uid": 4097},
        {"max_subscriptions": 1 << 17},
        {"max_subscriptions_per_uid": 1 << 17},
        {"capacity": 48},
        {"shm_prefix": "k" * 65},
        {"shm_prefix": "../x"},
        {"read_policy": {"": ["*"]}},
        {"read_policy": {"*": ["uid:1"] * 257}},
        {"read_policy": {f"s{i}": ["*"] for i in range(1025)}},
        {"ring_groups": {"imu*": ""}},
        {"external_writers": ["*"] * 1025},
        {"external_writers": ["user:" + "a" * 255]},
        {"broker_socket": "/" + "d" * 4096},
    ],
)
def test_a_setting_past_its_bounds_is_refused(setting: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        SensorConfig(**setting)


def test_settings_within_their_bounds_are_taken() -> None:
    config = SensorConfig(
        read_policy={"secret": [], "*": ["*"]},  # nobody may read "secret" (root may)
        ring_groups={"imu*": "kiki"},
        external_writers=[],
        max_external=0,
        max_subscriptions_per_uid=0,
        shm_prefix="k" * 64,
    )
    assert config.read_policy == {"secret": [], "*": ["*"]}
    assert config.ring_prefix() == "k" * 64
