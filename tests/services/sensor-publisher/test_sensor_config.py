"""The sensor publisher's settings that changed meaning are refused, not reinterpreted."""

from __future__ import annotations

import pydantic
import pytest

from kiki_sensor_publisher.config import SensorConfig

pytestmark = pytest.mark.unit


def test_an_empty_broker_socket_is_refused_rather_than_taken_for_the_default() -> None:
    # broker_socket = "" once switched the broker tools off; broker_tools = false does now.
    with pytest.raises(pydantic.ValidationError, match="broker_tools = false"):
        SensorConfig(broker_socket="")
    assert SensorConfig().broker_socket is None
    assert (
        SensorConfig(broker_socket="/run/kiki/tools.sock").broker_socket == "/run/kiki/tools.sock"
    )
