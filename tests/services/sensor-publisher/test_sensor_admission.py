"""Who gets which ring, without a socket: ring modes and groups from the read policy, and the
admission of external sensors (who may register, names, limits, the ring its app made)."""

from __future__ import annotations

import pytest

from kiki_sensor_publisher.admission import ExternalAdmission, Registration, RingFile, RingRules
from kiki_sensor_publisher.config import SensorConfig
from kiki_sensor_publisher.core import ReadPolicy
from libkiki.errors import (
    Conflict,
    InvalidParams,
    KikiError,
    LimitExceeded,
    NotFound,
    PermissionDenied,
)
from libkiki.peer import PeerCred
from libkiki.sensors.layout import IMU6
from libkiki.sensors.ring import segment_size

pytestmark = pytest.mark.unit

ALICE = PeerCred(pid=10, uid=1000, gid=1000)
BOB = PeerCred(pid=11, uid=1001, gid=1001, groups=frozenset({4242}))
ROOT = PeerCred(pid=1, uid=0, gid=0)
GROUPS = {"readers": 4242, "shared": 4343}
OWN_GID = 777


def rules(config: SensorConfig) -> RingRules:
    return RingRules(config, ReadPolicy(config.read_policy), resolve=GROUPS.get)


def admission(**settings: object) -> ExternalAdmission:
    config = SensorConfig.model_validate(settings)
    return ExternalAdmission(config, rules(config), "kt", own_gid=OWN_GID)


def register(
    adm: ExternalAdmission,
    peer: PeerCred = ALICE,
    name: object = "knee",
    *,
    session: object = "s1",
    capacity: object = 64,
    rate: object = 100,
    unit: object = "m/s2",
    layout: object = None,
    taken: tuple[str, ...] = (),
    attached: tuple[int, ...] = (),
) -> Registration:
    return adm.register(
        session,
        peer,
        name,
        IMU6.to_json() if layout is None else layout,
        capacity,
        rate,
        unit,
        taken=taken,
        attached_uids=attached,
    )


def test_ring_modes_and_groups_follow_the_read_policy() -> None:
    r = rules(
        SensorConfig(
            read_policy={"secret*": ["uid:0"], "*": ["*"]},
            ring_groups={"imu*": "readers", "gone*": "no-such-group"},
        )
    )
    assert r.access("cpu") == (0o640, -1)  # anyone may read: the unit's group
    assert r.access("secret-x") == (0o600, -1)  # restricted: the publisher alone maps it
    assert r.access("imu0") == (0o640, 4242)  # a group of its own, readers'
    with pytest.raises(KikiError, match="no group 'no-such-group'"):
        r.access("gone0")


def test_own_rings_hold_ten_seconds_of_a_slow_sensor_within_capacity() -> None:
    r = rules(SensorConfig(capacity=4096))
    assert r.own_capacity(0.5) == 16  # never fewer than 16 records
    assert r.own_capacity(10) == 128  # 100 samples, rounded up to a power of two
    assert r.own_capacity(1000) == 4096  # a fast sensor: capacity


def test_a_registration_names_the_ring_its_app_is_to_make() -> None:
    adm = admission(read_policy={"ext-*-secret": ["uid:0"], "*": ["*"]})
    reg = register(adm, capacity=128, rate=50)
    assert reg.sensor == "ext-uid1000-knee"
    assert reg.ring == "kt-ext.1000.ext-uid1000-knee"
    answer = reg.answer()
    assert answer == {
        "sensor": "ext-uid1000-knee",
        "ring": "kt-ext.1000.ext-uid1000-knee",
        "capacity": 128,
        "layout": IMU6.to_json(),
        "ringMode": 0o640,
        "ringGid": OWN_GID,  # anyone may read it: the unit's group, as our own rings'
    }
    secret = register(adm, name="secret")
    assert (secret.mode, secret.gid) == (0o600, OWN_GID)
    app = register(adm, PeerCred(pid=12, uid=1002, gid=1002, app_id="Knee.App"), name="x")
    assert app.sensor == "ext-knee-app-x"  # the app id, made a sensor name


def test_who_may_register() -> None:
    only_readers = admission(external_writers=["gid:4242", "uid:x"])
    with pytest.raises(PermissionDenied):
        register(only_readers, ALICE)
    register(only_readers, BOB)  # a supplementary group counts
    register(only_readers, ROOT)
    nobody = admission(external_writers=[])
    with pytest.raises(PermissionDenied):
        register(nobody, ROOT)  # an empty list lets nobody, root included
    # Permission is decided before the parameters are looked at.
    with pytest.raises(PermissionDenied):
        register(nobody, ALICE, name="Not A Name")


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"name": "Knee"}, InvalidParams),
        ({"name": "a" * 49}, InvalidParams),
        ({"name": 7}, InvalidParams),
        ({"capacity": 48}, InvalidParams),
        ({"capacity": 8}, InvalidParams),
        ({"capacity": "64"}, InvalidParams),
        ({"capacity": 1024 * 16 * 2}, LimitExceeded),
        ({"unit": "u" * 33}, InvalidParams),
        ({"rate": -1}, InvalidParams),
        ({"rate": "fast"}, InvalidParams),
        ({"layout": {"name": "x", "fields": [{"name": "a", "type": "f128"}]}}, InvalidParams),
    ],
)
def test_bad_registrations_are_refused(changes: dict[str, object], error: type[Exception]) -> None:
    adm = admission(capacity=1024)
    with pytest.raises(error):
        register(adm, **changes)  # type: ignore[arg-type]
    assert adm.held == {}


def test_names_are_taken_at_register_across_sessions() -> None:
    adm = admission()
    register(adm, session="s1")
    with pytest.raises(Conflict) as info:
        register(adm, session="s2")
    assert info.value.data == {"sensor": "ext-uid1000-knee"}
    with pytest.raises(Conflict):
        register(adm, name="hip", taken=("ext-uid1000-hip",))  # attached already
    assert adm.session_ended("s1") == ["ext-uid1000-knee"]
    register(adm, session="s2")  # released with its session


def test_quotas_count_held_and_attached_sensors_of_every_session() -> None:
    adm = admission(max_external=3, max_external_per_uid=2)
    register(adm, name="a", session="s1")
    with pytest.raises(LimitExceeded, match="2 sensors per user"):
        register(adm, name="b", session="s2", attached=(1000,))
    register(adm, BOB, name="b", session="s3")
    with pytest.raises(LimitExceeded, match="at most 3 external sensors"):
        register(adm, BOB, name="c", session="s3", attached=(1002,))
    adm.attached("ext-uid1000-a")  # attached: counted by the caller from now on
    register(adm, name="b", session="s1")


def test_only_the_registering_session_attaches() -> None:
    adm = admission()
    reg = register(adm, session="s1")
    with pytest.raises(NotFound):
        adm.held_by("s2", reg.sensor)
    with pytest.raises(NotFound):
        adm.held_by("s1", "ext-uid1000-other")
    assert adm.held_by("s1", reg.sensor) is reg


def test_the_ring_must_be_the_apps_and_no_more_open_than_the_policy() -> None:
    adm = admission(read_policy={"ext-*-secret": ["uid:0"], "*": ["*"]})
    reg = register(adm, name="secret", capacity=64)
    size = segment_size(IMU6, 64)
    adm.check_ring(reg, ALICE, RingFile(1000, 0o600, size))
    with pytest.raises(PermissionDenied, match="does not belong to you"):
        adm.check_ring(reg, ALICE, RingFile(1001, 0o600, size))
    with pytest.raises(PermissionDenied, match=r"mode 0640.*at most 0600"):
        adm.check_ring(reg, ALICE, RingFile(1000, 0o640, size))
    with pytest.raises(InvalidParams, match="not a ring of 64 records"):
        adm.check_ring(reg, ALICE, RingFile(1000, 0o600, size - 8))
