"""Subscriptions, coalesced wake-ups and the read policy, without an event loop."""

from __future__ import annotations

import pytest

from kiki_sensor_publisher.core import ReadPolicy, WakeCore, subscribe_params
from libkiki.errors import InvalidParams, LimitExceeded
from libkiki.peer import PeerCred

pytestmark = pytest.mark.unit

ALICE = PeerCred(pid=10, uid=1000, gid=1000)
BOB = PeerCred(pid=11, uid=1001, gid=1001)


def test_every_sample_policy_wakes_once_and_coalesces() -> None:
    core = WakeCore(max_subscriptions=10, max_wakeups_hz=1000)
    sub = core.connect(ALICE)
    core.subscribe(sub, ["imu0", "cpu"], None)
    assert core.published("imu0", 1, 64) == [sub]  # nothing pending: wake it
    assert core.published("imu0", 2, 64) == []  # already pending: coalesced
    assert core.published("cpu", 7, 64) == []
    assert core.take(sub, 0.0) == ({"imu0": 2, "cpu": 7}, 0.0)
    assert sub.coalesced == 1
    assert sub.wakeups == 1
    assert core.take(sub, 0.0) == (None, 0.0)
    assert core.published("memory", 1, 64) == []  # not subscribed


def test_batched_policy_waits_for_its_interval() -> None:
    core = WakeCore(max_subscriptions=10, max_wakeups_hz=1000)
    sub = core.connect(ALICE)
    core.subscribe(sub, ["imu0"], 10)
    core.published("imu0", 1, 64)
    assert core.take(sub, 100.0) == ({"imu0": 1}, 0.0)
    core.published("imu0", 5, 64)
    message, wait = core.take(sub, 100.04)
    assert message is None
    assert wait == pytest.approx(0.06)
    assert core.take(sub, 100.1) == ({"imu0": 5}, 0.0)


def test_overruns_count_each_lap_of_a_stalled_subscriber() -> None:
    core = WakeCore(max_subscriptions=10, max_wakeups_hz=1000)
    sub = core.connect(ALICE)
    core.subscribe(sub, ["imu0"], None)
    core.published("imu0", 1, 64)
    core.take(sub, 0.0)  # delivered up to 1; then the subscriber stalls
    for index in range(2, 200):
        core.published("imu0", index, 64)
    assert sub.overruns == 3  # lapped at 66, 131 and 196
    assert sub.pending == {"imu0": 199}


def test_limits_and_bad_rates() -> None:
    core = WakeCore(max_subscriptions=3, max_wakeups_hz=100)
    a, b = core.connect(ALICE), core.connect(BOB)
    core.subscribe(a, ["x", "y"], None)
    with pytest.raises(LimitExceeded):
        core.subscribe(b, ["x", "y"], None)
    with pytest.raises(InvalidParams):
        core.subscribe(b, ["z"], 1000)
    core.subscribe(a, ["x", "y"], None)  # resubscribing costs nothing
    core.disconnect(a)
    assert core.by_sensor == {}
    core.subscribe(b, ["x", "y", "z"], 50)


def test_drop_sensor_and_unsubscribe() -> None:
    core = WakeCore(max_subscriptions=10, max_wakeups_hz=100)
    a = core.connect(ALICE)
    core.subscribe(a, ["ext", "imu0"], None)
    core.published("ext", 3, 16)
    assert core.drop_sensor("ext") == [a]
    assert a.pending == {}
    assert core.unsubscribe(a, ["imu0", "nope"]) == ["imu0"]
    assert a.sensors == set()


def test_read_policy() -> None:
    policy = ReadPolicy({"imu*": ["uid:1000", "gid:4242"], "secret": [], "*": ["*"]})
    assert policy.allows(ALICE, "imu0")
    assert not policy.allows(BOB, "imu0")
    assert policy.allows(PeerCred(pid=1, uid=5, gid=4242), "imu1")
    assert not policy.allows(ALICE, "secret")
    assert policy.allows(PeerCred(pid=1, uid=0, gid=0), "secret")  # root reads everything
    assert policy.allows(BOB, "cpu0")
    assert not ReadPolicy({}).allows(ALICE, "cpu")
    assert not ReadPolicy({"*": ["user:no-such-user", "uid:x"]}).allows(ALICE, "cpu")


def test_fastest_interval_per_sensor_follows_subscriptions() -> None:
    core = WakeCore(max_subscriptions=10, max_wakeups_hz=1000)
    a, b = core.connect(ALICE), core.connect(BOB)
    core.subscribe(a, ["imu0"], 10)
    assert core.fastest == {"imu0": pytest.approx(0.1)}
    core.subscribe(b, ["imu0", "cpu"], None)
    assert core.fastest == {"imu0": 0.0, "cpu": 0.0}
    core.disconnect(b)
    assert core.fastest == {"imu0": pytest.approx(0.1)}
    core.unsubscribe(a, ["imu0"])
    assert core.fastest == {}


def test_a_wake_up_not_sent_is_owed_again() -> None:
    core = WakeCore(max_subscriptions=10, max_wakeups_hz=1000)
    sub = core.connect(ALICE)
    core.subscribe(sub, ["imu0", "cpu"], None)
    core.published("imu0", 5, 64)
    message, _ = core.take(sub, 0.0)
    assert message == {"imu0": 5}
    core.published("imu0", 6, 64)  # newer than what was taken
    core.restore(sub, {"imu0": 5, "gone": 1})
    assert sub.pending == {"imu0": 6}
    assert sub.wakeups == 0
    core.restore(sub, {"cpu": 2})
    assert core.take(sub, 0.0) == ({"imu0": 6, "cpu": 2}, 0.0)


def test_a_subscribe_keeps_the_policy_of_the_connections_other_sensors() -> None:
    core = WakeCore(max_subscriptions=10, max_wakeups_hz=1000)
    sub = core.connect(ALICE)
    core.subscribe(sub, ["imu0"], 10)
    core.subscribe(sub, ["cpu"], 2)
    # imu0 keeps its 10 a second; cpu has its 2.
    assert core.fastest == {"imu0": pytest.approx(0.1), "cpu": pytest.approx(0.5)}
    assert sub.view()["maxWakeupsPerSensor"] == {"cpu": 2, "imu0": 10}
    # The connection is woken at its most eager sensor's pace: 0.1 s apart.
    core.published("cpu", 1, 64)
    assert core.take(sub, 100.0)[0] == {"cpu": 1}
    core.published("cpu", 2, 64)
    message, wait = core.take(sub, 100.05)
    assert message is None
    assert wait == pytest.approx(0.05)
    core.unsubscribe(sub, ["imu0"])
    assert core.fastest == {"cpu": pytest.approx(0.5)}
    message, wait = core.take(sub, 100.2)
    assert message is None
    assert wait == pytest.approx(0.3)
    # Every subscription made is counted, for stats.
    assert core.subscriptions == {"imu0": 1, "cpu": 1}


def test_one_user_cannot_take_the_whole_pool() -> None:
    core = WakeCore(max_subscriptions=4, max_wakeups_hz=100, max_subscriptions_per_uid=2)
    a1, a2, b = core.connect(ALICE), core.connect(ALICE), core.connect(BOB)
    core.subscribe(a1, ["x"], None)
    core.subscribe(a2, ["y"], None)  # another connection of the same user counts too
    with pytest.raises(LimitExceeded) as info:
        core.subscribe(a2, ["z"], None)
    assert info.value.data == {"limit": 2, "uid": ALICE.uid}
    core.subscribe(a1, ["x"], 50)  # changing a subscription's rate costs nothing
    core.subscribe(b, ["x", "y"], None)  # the rest of the pool is still there for others
    core.disconnect(a2)
    core.subscribe(a1, ["z"], None)
    assert core.by_sensor["z"] == {a1}


def test_subscribe_params_are_checked_before_anything_is_looked_up() -> None:
    assert subscribe_params(["imu0"], 0, "socket") == (["imu0"], None, False)
    assert subscribe_params(["imu0", "cpu"], 50, "futex") == (["imu0", "cpu"], 50, True)
    for bad in (
        ("imu0", 0, "socket"),
        ([1], 0, "socket"),
        (["imu0"], -1, "socket"),
        (["imu0"], "10", "socket"),
        (["imu0"], 0, "carrier-pigeon"),
    ):
        with pytest.raises(InvalidParams):
            subscribe_params(*bad)


def test_stats_show_a_peer_its_own_subscribers_and_root_everyones() -> None:
    core = WakeCore(max_subscriptions=10, max_wakeups_hz=100)
    a, b, idle = core.connect(ALICE), core.connect(BOB), core.connect(ALICE)
    core.subscribe(a, ["imu0"], None)
    core.subscribe(b, ["cpu"], 10)
    assert [v["id"] for v in core.views_for(ALICE)] == [a.id]  # not the idle connection
    assert [v["id"] for v in core.views_for(PeerCred(pid=1, uid=0, gid=0))] == [a.id, b.id]
    assert idle.id not in [v["id"] for v in core.views_for(BOB)]
