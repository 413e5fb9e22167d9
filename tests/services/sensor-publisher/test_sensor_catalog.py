"""What a peer may see and read of the publisher's sensors, without a socket: real rings in
/dev/shm (the publisher's own, and an external one read through pread), no connection."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from kiki_sensor_publisher.catalog import Catalog, samples_json
from kiki_sensor_publisher.core import ReadPolicy, WakeCore
from kiki_sensor_publisher.rings import Sensor
from libkiki.errors import InvalidFrame, InvalidParams, NotFound, PermissionDenied
from libkiki.peer import PeerCred
from libkiki.sensors.layout import IMU6, TEMPERATURE
from libkiki.sensors.ring import segment_size
from libkiki.sensors.shm import MappedReader, MappedWriter

pytestmark = pytest.mark.unit

ALICE = PeerCred(pid=10, uid=1000, gid=1000)
ROOT = PeerCred(pid=1, uid=0, gid=0)
SAMPLE = (0.5, -0.25, 9.81, 0.0, 0.125, 1.0)


@pytest.fixture
def catalog(shm_prefix: str) -> Iterator[Catalog]:
    cat = Catalog(ReadPolicy({"secret*": ["uid:0"], "*": ["*"]}))
    for sid in ("imu0", "secret0"):
        cat.add(Sensor.create(sid, "imu", "", IMU6, 100, f"{shm_prefix}.{sid}", 16))
    yield cat
    cat.close()


def write(sensor: Sensor, *samples: tuple[float, ...]) -> None:
    assert sensor.writer is not None
    for i, values in enumerate(samples):
        sensor.writer.write(1000 + i, values)


@pytest.fixture
def external(catalog: Catalog, shm_prefix: str) -> Iterator[tuple[Sensor, MappedWriter]]:
    """An app's ring, attached as the publisher attaches one: never mapped by the reader."""
    name = f"{shm_prefix}-ext.{os.getuid()}.ext-app-knee"
    writer = MappedWriter(name, IMU6, 16)
    me = PeerCred(pid=os.getpid(), uid=os.getuid(), gid=os.getgid())
    reader = MappedReader(name, IMU6, owner=os.getuid(), mapped=False)
    sensor = Sensor.external("ext-app-knee", "", IMU6, 50, reader, me)
    catalog.add(sensor)
    yield sensor, writer
    # The writer's own mapping: the whole file again before it is touched (past the end of a
    # truncated file it would be SIGBUS for this process, the app's side).
    os.truncate(writer.path, segment_size(IMU6, 16))
    writer.close()


def test_a_peer_sees_and_reads_what_the_policy_lets_it(catalog: Catalog) -> None:
    assert [v["id"] for v in catalog.views(ALICE)] == ["imu0"]
    assert [v["id"] for v in catalog.views(ROOT)] == ["imu0", "secret0"]
    with pytest.raises(PermissionDenied) as denied:
        catalog.read(ALICE, "secret0", 1)
    assert denied.value.data == {"sensor": "secret0"}
    with pytest.raises(NotFound) as missing:
        catalog.read(ALICE, "nope", 1)
    assert missing.value.data == {"sensor": "nope", "error": "UnknownSensor"}
    assert catalog.read(ROOT, "secret0", 1)["samples"] == []


def test_read_answers_the_latest_samples_in_fixed_point(catalog: Catalog) -> None:
    imu = catalog.get("imu0")
    assert imu is not None
    write(imu, SAMPLE, (float("nan"), *SAMPLE[1:]))
    answer = catalog.read(ALICE, "imu0", 2)
    assert answer["sensor"]["writeIndex"] == 2
    scale = 10**IMU6.scale
    first, second = answer["samples"]
    assert first == {"seq": 0, "timestampNs": 1000, "values": [round(v * scale) for v in SAMPLE]}
    assert second["values"][0] == 0  # NaN: no value
    assert second["missing"] == [0]
    for count in (0, 1025, "2", None):
        with pytest.raises(InvalidParams):
            catalog.read(ALICE, "imu0", count)
    with pytest.raises(InvalidParams):
        catalog.read(ALICE, 7, 1)


def test_samples_json_marks_infinities_missing(catalog: Catalog, shm_prefix: str) -> None:
    temp = Sensor.create("t0", "thermal", "C", TEMPERATURE, 1, f"{shm_prefix}.t0", 16)
    catalog.add(temp)
    write(temp, (float("inf"),), (21.5,))
    items = samples_json(temp.latest(2))
    assert items[0]["missing"] == [0]
    assert "missing" not in items[1]
    assert items[1]["values"] == [round(21.5 * 10**TEMPERATURE.scale)]


def test_futex_wake_ups_are_for_the_publishers_own_rings(
    catalog: Catalog, external: tuple[Sensor, MappedWriter]
) -> None:
    assert [s.id for s in catalog.subscribable(ALICE, ["imu0"], futex=True)] == ["imu0"]
    with pytest.raises(InvalidParams) as refused:
        catalog.subscribable(ALICE, ["imu0", "ext-app-knee"], futex=True)
    assert refused.value.data == {"sensor": "ext-app-knee"}
    assert len(catalog.subscribable(ALICE, ["ext-app-knee"], futex=False)) == 1
    with pytest.raises(PermissionDenied):
        catalog.subscribable(ALICE, ["secret0"], futex=False)


def test_an_external_ring_its_app_broke_costs_the_app_its_sensor(
    catalog: Catalog, external: tuple[Sensor, MappedWriter]
) -> None:
    sensor, writer = external
    writer.ring.write(5, SAMPLE)
    assert catalog.read(ALICE, sensor.id, 1)["samples"][0]["timestampNs"] == 5
    broken: list[Sensor] = []

    def drop(s: Sensor) -> None:
        broken.append(s)
        catalog.remove(s)

    catalog.on_broken = drop
    os.truncate(writer.path, 0)
    with pytest.raises(InvalidFrame) as info:
        catalog.read(ALICE, sensor.id, 1)
    assert info.value.data == {"sensor": sensor.id}
    assert broken == [sensor]
    assert sensor.id not in catalog
    assert [v["id"] for v in catalog.views(ALICE)] == ["imu0"]


def test_a_broken_external_ring_is_left_out_of_the_list_and_the_stats(
    catalog: Catalog, external: tuple[Sensor, MappedWriter]
) -> None:
    sensor, writer = external
    core = WakeCore(max_subscriptions=8, max_wakeups_hz=1000)
    assert set(catalog.stats(ALICE, core)["sensors"]) == {"imu0", sensor.id}
    os.truncate(writer.path, 0)
    assert set(catalog.stats(ALICE, core)["sensors"]) == {"imu0"}
    assert sensor.id not in catalog  # the default: removed from the catalog


def test_stats_count_subscribers_as_far_as_the_peer_may_see(catalog: Catalog) -> None:
    core = WakeCore(max_subscriptions=8, max_wakeups_hz=1000)
    alice, root = core.connect(ALICE), core.connect(ROOT)
    core.subscribe(alice, ["imu0"], None)
    core.subscribe(root, ["imu0", "secret0"], 10, futex=True)
    imu = catalog.get("imu0")
    assert imu is not None
    write(imu, SAMPLE)
    mine = catalog.stats(ALICE, core)
    assert set(mine["sensors"]) == {"imu0"}
    assert mine["sensors"]["imu0"] | {"rateHz": 0} == {
        "written": 1,
        "rateHz": 0,
        "nominalHz": 100,
        "subscribers": 2,
        "futexSubscribers": 1,
        "subscriptions": 2,
        "overruns": 0,
        "coalesced": 0,
        "capacity": 16,
    }
    assert [s["uid"] for s in mine["subscribers"]] == [1000]  # its own only
    everyone = catalog.stats(ROOT, core)
    assert set(everyone["sensors"]) == {"imu0", "secret0"}
    assert sorted(s["uid"] for s in everyone["subscribers"]) == [0, 1000]
