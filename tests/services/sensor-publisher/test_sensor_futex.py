"""Futex wake-ups: the ring's wake counter, BlockingSensorReader against the real publisher."""

from __future__ import annotations

import asyncio
import itertools
import signal
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from kiki_sensor_publisher.sources import SyntheticImu
from kikitest.sensor_fixtures import StartPublisher
from libkiki.errors import InvalidParams, NotFound, Timeout, Unavailable
from libkiki.sensors import futex
from libkiki.sensors.blocking import BlockingSensorReader
from libkiki.sensors.client import ExternalSensor, SensorClient
from libkiki.sensors.layout import IMU6, Field, Layout
from libkiki.sensors.ring import WAKE_OFFSET, RingChanged
from libkiki.sensors.shm import MappedReader, MappedWriter, mark_retired

pytestmark = pytest.mark.integration

IMU = SyntheticImu(1000)
SAMPLE = (0.1, 0.2, 9.81, 0.01, 0.02, 0.03)


def f32(values: tuple[float, ...]) -> tuple[float, ...]:
    return struct.unpack("<6f", struct.pack("<6f", *values))


@pytest.fixture
def ring(shm_prefix: str) -> Iterator[tuple[MappedWriter, MappedReader]]:
    writer = MappedWriter(f"{shm_prefix}.imu", IMU6, 64)
    reader = MappedReader(f"{shm_prefix}.imu", IMU6, futex=True)
    yield writer, reader
    reader.close()
    writer.close()


def test_the_wake_counter_moves_on_bump_and_retire(
    ring: tuple[MappedWriter, MappedReader],
) -> None:
    writer, reader = ring
    assert reader.ring.wake_count == 0
    writer.ring.write(1, SAMPLE)
    assert reader.ring.wake_count == 0  # a write alone wakes nobody
    writer.ring.bump_wake()
    assert reader.ring.wake_count == 1
    writer.ring.retire()
    assert reader.ring.wake_count == 2
    assert reader.ring.retired


def test_a_sleeper_is_not_put_to_sleep_on_a_stale_count(
    ring: tuple[MappedWriter, MappedReader],
) -> None:
    writer, reader = ring
    assert reader.word is not None
    seen = reader.ring.wake_count
    assert reader.word.wait(seen, 0.01) is False  # nothing moved: it slept, and timed out
    writer.ring.bump_wake()
    # The count moved after the look: the kernel refuses to sleep (no timeout needed).
    assert reader.word.wait(seen, None) is True


def test_one_wake_reaches_a_sleeper_in_another_thread(
    ring: tuple[MappedWriter, MappedReader],
) -> None:
    writer, reader = ring
    assert reader.word is not None
    word = reader.word
    seen = reader.ring.wake_count
    result: list[bool] = []
    sleeper = threading.Thread(target=lambda: result.append(word.wait(seen, 60)))
    sleeper.start()
    # The writer's side, through its own (writable) mapping of the same page.
    address = futex.writable_address(writer._map, WAKE_OFFSET)
    writer.ring.bump_wake()
    futex.wake(address)
    sleeper.join(30)
    # Woken (or never asleep, the count having moved first): never the 60 s timeout.
    assert not sleeper.is_alive()
    assert result == [True]


def test_mark_retired_moves_the_count(shm_prefix: str) -> None:
    writer = MappedWriter(f"{shm_prefix}.old", IMU6, 16)
    reader = MappedReader(f"{shm_prefix}.old", IMU6, futex=True)
    try:
        before = reader.ring.wake_count
        assert mark_retired(writer._map)
        assert reader.ring.wake_count == before + 1
        with pytest.raises(RingChanged):
            reader.ring.check()
    finally:
        reader.close()
        writer.close()


def test_futex_needs_a_mapped_ring(shm_prefix: str) -> None:
    writer = MappedWriter(f"{shm_prefix}.x", IMU6, 16)
    try:
        with pytest.raises(InvalidParams):
            MappedReader(f"{shm_prefix}.x", IMU6, mapped=False, futex=True)
    finally:
        writer.close()


# -- against the publisher --------------------------------------------------------------------


def _read(reader: BlockingSensorReader, want: int) -> list[tuple[int, tuple[float, ...]]]:
    got: list[tuple[int, tuple[float, ...]]] = []
    while len(got) < want:
        batch = reader.next_batch(timeout=20)
        assert batch.count or batch.lost, "no sample within 20 s"
        got += [(s.index, s.values) for s in batch]
    return got


async def test_blocking_reader_gets_every_imu_sample_in_order(
    start_publisher: StartPublisher,
) -> None:
    pub = start_publisher()
    reader = BlockingSensorReader("imu0", path=pub.socket, layout=IMU6)
    await asyncio.to_thread(reader.open)
    try:
        got = await asyncio.to_thread(_read, reader, 500)
        indices = [i for i, _ in got]
        assert indices == list(range(indices[0], indices[0] + len(indices)))
        assert reader.lost == 0
        assert [v for _, v in got] == [f32(IMU.values(i)) for i in indices]
        async with SensorClient(pub.socket) as client:
            stats = await client.stats()
        (sub,) = (s for s in stats["subscribers"] if s["sensors"] == ["imu0"])
        # Woken through the ring: the publisher sent it no wake-up message at all.
        assert sub["futex"] == ["imu0"]
        assert sub["wakeups"] == 0
        assert stats["sensors"]["imu0"]["futexSubscribers"] == 1
        # The other readers' API works the same: latest, history.
        assert reader.latest().count == 1
        assert reader.history(0.1).count > 0
    finally:
        reader.close()


async def test_blocking_reader_errors(start_publisher: StartPublisher, tmp_path: Path) -> None:
    pub = start_publisher()
    with pytest.raises(NotFound):
        await asyncio.to_thread(BlockingSensorReader("nope", path=pub.socket).open)
    with pytest.raises(Unavailable):
        await asyncio.to_thread(BlockingSensorReader("imu0", path=tmp_path / "none.sock").open)
    # A socket that accepts (the kernel's backlog) and never answers: a Timeout, not a hang.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mute:
        mute.bind(str(tmp_path / "mute.sock"))
        mute.listen(1)
        with pytest.raises(Timeout, match="sensors/subscribe"):
            await asyncio.to_thread(
                BlockingSensorReader("imu0", path=tmp_path / "mute.sock", timeout=0.2).open
            )
    async with SensorClient(pub.socket) as client:
        with pytest.raises(InvalidParams, match="wake"):
            await client.request("sensors/subscribe", {"sensors": ["imu0"], "wake": "smoke"})
    # An external sensor's ring is never mapped by the publisher: no futex wake-ups for it.
    wheel = Layout("wheel", (Field("speed", "f64", "m/s"),))
    async with (
        ExternalSensor("wheel", wheel, capacity=16, path=pub.socket) as ext,
        SensorClient(pub.socket) as client,
    ):
        with pytest.raises(InvalidParams, match="own rings"):
            await client.request("sensors/subscribe", {"sensors": [ext.id], "wake": "futex"})


def _read_unbounded(reader: BlockingSensorReader, want: int) -> threading.Thread:
    """Read ``want`` samples in a daemon thread with no timeout of the reader's own: only a
    wake-up gets it out of a sleep (a thread stuck for good does not hold up the run's exit)."""

    def run() -> None:
        got = 0
        while got < want:
            got += reader.next_batch().count

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def test_a_sleeping_reader_follows_a_restart(start_publisher: StartPublisher) -> None:
    """A clean stop retires the ring and wakes its sleepers through the counter; the reader
    (which would otherwise not look again for an hour) maps the next run's ring and goes on."""
    pub = start_publisher()
    reader = BlockingSensorReader("imu0", path=pub.socket, check_interval=3600)
    await asyncio.to_thread(reader.open)
    try:
        await asyncio.to_thread(_read, reader, 50)
        generation = reader.view["generation"]
        # Asleep (or about to be) while the publisher stops; then it needs the next run.
        thread = _read_unbounded(reader, 2000)
        pub.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(pub.proc.wait, 20) == 0
        again = start_publisher()
        await asyncio.to_thread(thread.join, 60)
        assert not thread.is_alive(), "the reader slept through the ring's retirement"
        assert reader.restarts >= 1
        assert reader.view["generation"] != generation
        assert again.pid != pub.pid
        batch = reader.latest(10)
        assert [s.values for s in batch] == [f32(IMU.values(s.index)) for s in batch]
    finally:
        reader.close()


async def test_a_killed_publisher_is_noticed_by_the_check(start_publisher: StartPublisher) -> None:
    """SIGKILL wakes nobody: the reader's periodic look finds the connection gone, and it
    maps the ring of the next run."""
    pub = start_publisher()
    reader = BlockingSensorReader("imu0", path=pub.socket, check_interval=0.2)
    await asyncio.to_thread(reader.open)
    try:
        await asyncio.to_thread(_read, reader, 20)
        pub.proc.send_signal(signal.SIGKILL)
        pub.proc.wait(timeout=10)
        reading = asyncio.create_task(asyncio.to_thread(_read, reader, 2000))
        again = start_publisher()
        await asyncio.wait_for(reading, 60)
        assert reader.restarts >= 1
        assert again.pid != pub.pid
        assert reader.view["ring"] in again.rings()
    finally:
        reader.close()


async def test_the_imu_clock_changes_hands_without_a_gap(start_publisher: StartPublisher) -> None:
    """Futex readers alone: the IMU is sampled by a thread. A subscriber that wants every
    sample as a message moves it onto the event loop's timer, and its leaving moves it back.
    Across the switches the ring has one writer: no sample missing, doubled or reordered."""
    pub = start_publisher()

    async def clock() -> dict[str, object]:
        async with SensorClient(pub.socket) as client:
            stats = await client.stats()
        value: dict[str, object] = stats["imuClock"]
        return value

    reader = BlockingSensorReader("imu0", path=pub.socket)
    await asyncio.to_thread(reader.open)
    try:
        assert await clock() == {"mode": "thread", "tickHz": 1000.0}
        samples: list[tuple[int, int, tuple[float, ...]]] = []

        def collect(want: int) -> None:
            while len(samples) < want:
                batch = reader.next_batch(timeout=20)
                samples.extend((s.index, s.timestamp_ns, s.values) for s in batch)

        modes = []
        for round_ in range(3):
            async with SensorClient(pub.socket) as messages:
                await messages.subscribe(["imu0"])  # every sample, by message
                modes.append((await clock())["mode"])
                await asyncio.to_thread(collect, 150 * (2 * round_ + 1))
            await eventually_mode(clock, "thread")
            modes.append((await clock())["mode"])
            await asyncio.to_thread(collect, 150 * (2 * round_ + 2))
        assert modes == ["signal", "thread"] * 3
        indices = [i for i, _, _ in samples]
        assert indices == list(range(indices[0], indices[0] + len(indices)))
        stamps = [t for _, t, _ in samples]
        assert all(a < b for a, b in itertools.pairwise(stamps))
        assert [v for _, _, v in samples] == [f32(IMU.values(i)) for i in indices]
        assert reader.lost == 0
        # Batched message subscribers leave the sampling to the thread, beside futex sleepers
        # and alone (at most every 10 ms, then).
        async with SensorClient(pub.socket) as batched:
            await batched.subscribe(["imu0"], max_wakeups=20)
            assert await clock() == {"mode": "thread", "tickHz": 1000.0}
            await asyncio.to_thread(reader.close)
            await eventually_tick(clock, 100.0)
            assert (await clock())["mode"] == "thread"
    finally:
        reader.close()


async def eventually_mode(clock: Callable[[], Awaitable[dict[str, object]]], mode: str) -> None:
    """A leaving subscriber's disconnect reaches the publisher a moment later."""
    async with asyncio.timeout(10):
        while (await clock())["mode"] != mode:  # noqa: ASYNC110 -- asking the publisher
            await asyncio.sleep(0.02)


async def eventually_tick(clock: Callable[[], Awaitable[dict[str, object]]], hz: float) -> None:
    async with asyncio.timeout(10):
        while (await clock())["tickHz"] != hz:  # noqa: ASYNC110 -- asking the publisher
            await asyncio.sleep(0.02)
