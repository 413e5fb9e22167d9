"""The broker tools' answers without a broker: who the caller is taken to be, and what it gets
(the same catalog, and read policy, as the notify socket's)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest

from kiki_sensor_publisher.catalog import Catalog
from kiki_sensor_publisher.core import ReadPolicy
from kiki_sensor_publisher.rings import Sensor
from kiki_sensor_publisher.tools import LIST, NOBODY, caller, list_for, read_for
from libkiki.errors import InvalidParams, PermissionDenied
from libkiki.rpc import RequestContext
from libkiki.sensors.layout import IMU6
from libkiki.tools import ToolCall

pytestmark = pytest.mark.unit

POLICY = {"imu*": ["app:kiki-recorder", "gid:4242"], "*": ["*"]}


@pytest.fixture
def catalog(shm_prefix: str) -> Iterator[Catalog]:
    cat = Catalog(ReadPolicy(POLICY))
    for sid in ("imu0", "cpu"):
        cat.add(Sensor.create(sid, "imu", "", IMU6, 100, f"{shm_prefix}.{sid}", 16))
    yield cat
    cat.close()


def call(who: dict[str, Any]) -> ToolCall:
    # The request is the broker's connection; these answers never look at it.
    return ToolCall(LIST, who, cast(RequestContext, None))


def listed(catalog: Catalog, who: dict[str, Any]) -> list[str]:
    return [s["id"] for s in list_for(catalog, caller(call(who)))["sensors"]]


def test_a_system_units_app_id_counts_and_a_users_does_not(catalog: Catalog) -> None:
    unit = {"uid": 990, "gid": 990, "pid": 7, "appId": "kiki-recorder", "groups": []}
    assert listed(catalog, unit) == ["cpu", "imu0"]
    # A process in alice's own user manager may name itself anything: the same app id is
    # alice's word for it, and does not grant alone.
    session = {**unit, "uid": 1000, "appUser": 1000}
    assert listed(catalog, session) == ["cpu"]
    # A broker that does not say whose the app id is (no groups): the user's word, too.
    untold = {"uid": 1000, "gid": 1000, "pid": 7, "appId": "kiki-recorder"}
    assert listed(catalog, untold) == ["cpu"]


def test_the_callers_supplementary_groups_count(catalog: Catalog) -> None:
    who = {"uid": 1000, "gid": 1000, "pid": 7, "groups": [4242]}
    assert listed(catalog, who) == ["cpu", "imu0"]
    assert listed(catalog, {**who, "groups": []}) == ["cpu"]


def test_a_caller_the_broker_did_not_say_is_nobody(catalog: Catalog) -> None:
    assert caller(call({})) is NOBODY
    assert caller(call({"uid": 0, "gid": 0})) is NOBODY  # no pid: not a whole identity
    assert listed(catalog, {}) == ["cpu"]


def test_read_answers_the_tools_view(catalog: Catalog) -> None:
    imu = catalog.get("imu0")
    assert imu is not None
    assert imu.writer is not None
    imu.writer.write(42, (0.0, 0.0, 9.81, 0.0, 0.0, 0.0))
    root = caller(call({"uid": 0, "gid": 0, "pid": 1, "groups": []}))
    answer = read_for(catalog, root, {"sensor": "imu0"})
    assert answer["sensor"]["fields"] == ["ax", "ay", "az", "gx", "gy", "gz"]
    assert answer["sensor"]["layout"] == "imu6"
    assert "generation" not in answer["sensor"]
    assert [s["timestampNs"] for s in answer["samples"]] == [42]
    with pytest.raises(PermissionDenied):
        read_for(catalog, NOBODY, {"sensor": "imu0"})
    with pytest.raises(InvalidParams):
        read_for(catalog, root, {"sensor": "imu0", "count": 0})
