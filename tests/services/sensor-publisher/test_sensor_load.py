"""The publisher on a busy machine: two CPU spinners and an fsyncing writer beside it.

Under such load a fresh clone's run once saw the IMU's timestamps go backwards, and a benchmark
once saw the publisher outlive its SIGTERM at 10 kHz with four readers. These tests run the
real publisher in those conditions: the clock switching ways as fast as subscribers can make it
while a reader checks every sample, and a stop in each clock way with four every-sample readers.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest

from kiki_sensor_publisher.sources import SyntheticImu
from kikitest.sensor_fixtures import Publisher, StartPublisher
from libkiki.errors import Timeout
from libkiki.sensors.blocking import BlockingSensorReader
from libkiki.sensors.client import SensorClient

pytestmark = pytest.mark.integration

DRAIN_TIMEOUT = 3.0


def f32(values: tuple[float, ...]) -> tuple[float, ...]:
    return struct.unpack("<6f", struct.pack("<6f", *values))


async def clock_mode(pub: Publisher) -> str:
    async with SensorClient(pub.socket) as client:
        stats = await client.stats()
    mode: str = stats["imuClock"]["mode"]
    return mode


async def test_stamps_never_go_back_while_the_clock_switches_under_load(
    start_publisher: StartPublisher, busy_machine: Any
) -> None:
    """A futex reader batched at 100 wake-ups/s leaves the sampling to the thread, in 10 ms
    ticks; a message subscriber that wants every sample moves it onto the loop's timer, one
    sample per tick, and its unsubscribe moves it back. Sixty switches, each after the ring
    has moved on, while the reader checks every sample: consecutive indices (what it lost, it
    is told), its own values (one writer), and stamps that always increase."""
    rate = 5000
    imu = SyntheticImu(rate)
    pub = start_publisher(imu_hz=rate, capacity=4096)
    reader = BlockingSensorReader("imu0", path=pub.socket, max_wakeups=100)
    await asyncio.to_thread(reader.open)
    samples: list[tuple[int, int, tuple[float, ...]]] = []
    gaps: list[tuple[int, int]] = []  # (expected start, lost) per batch that lost samples
    newest = [-1]
    done = threading.Event()

    def collect() -> None:
        while not done.is_set():
            batch = reader.next_batch(timeout=20)
            if batch.lost:
                gaps.append((batch.start - batch.lost, batch.lost))
            samples.extend((s.index, s.timestamp_ns, s.values) for s in batch)
            if batch.count:
                newest[0] = batch.end - 1

    async def moved_on(by: int) -> None:
        start = newest[0]
        while newest[0] < start + by:
            if collector.done():
                await collector  # its error, not a timeout
            await asyncio.sleep(0.002)

    collector = asyncio.create_task(asyncio.to_thread(collect))
    try:
        async with asyncio.timeout(120), SensorClient(pub.socket) as switcher:
            await moved_on(1)
            assert await clock_mode(pub) == "thread"
            for round_ in range(30):
                await switcher.subscribe(["imu0"])  # every sample, by message
                if round_ == 0:
                    assert await clock_mode(pub) == "signal"
                await moved_on(25)
                await switcher.unsubscribe(["imu0"])
                if round_ == 0:
                    assert await clock_mode(pub) == "thread"
                await moved_on(25)
    finally:
        done.set()
        await collector
        await asyncio.to_thread(reader.close)

    indices = [i for i, _, _ in samples]
    expected = list(range(indices[0], indices[-1] + 1))
    lost = {i for start, n in gaps for i in range(start, start + n)}
    assert indices == [i for i in expected if i not in lost]
    stamps = [t for _, t, _ in samples]
    backwards = [(a, b) for a, b in itertools.pairwise(stamps) if b <= a]
    assert not backwards, backwards[:5]
    assert [v for _, _, v in samples] == [f32(imu.values(i)) for i in indices]


# Every-sample readers, each in a process of its own: asyncio ones (wake-up messages: the
# loop's timer samples) or futex sleepers (the thread samples). Each says when it has read.
SOCKET_READER = """
import asyncio, sys
from libkiki.sensors.client import SensorReader
async def main():
    async with SensorReader("imu0", path=sys.argv[1]) as r:
        said = False
        async for batch in r:
            if batch.count and not said:
                print("reading", flush=True)
                said = True
asyncio.run(main())
"""
FUTEX_READER = """
import sys
from libkiki.sensors.blocking import BlockingSensorReader
with BlockingSensorReader("imu0", path=sys.argv[1]) as r:
    said = False
    for batch in r:
        if batch.count and not said:
            print("reading", flush=True)
            said = True
"""


@asynccontextmanager
async def readers(code: str, pub: Publisher, n: int) -> AsyncIterator[None]:
    procs: list[asyncio.subprocess.Process] = []
    try:
        for _ in range(n):
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-c",
                    code,
                    str(pub.socket),
                    stdout=subprocess.PIPE,
                    start_new_session=True,
                )
            )
        async with asyncio.timeout(90):
            for proc in procs:
                assert proc.stdout is not None
                assert await proc.stdout.readline() == b"reading\n"
        yield
    finally:
        for proc in procs:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


@pytest.mark.parametrize(("code", "mode"), [(SOCKET_READER, "signal"), (FUTEX_READER, "thread")])
async def test_sigterm_stops_a_20khz_publisher_with_four_readers_under_load(
    start_publisher: StartPublisher, busy_machine: Any, code: str, mode: str
) -> None:
    rate = 20_000
    pub = start_publisher(imu_hz=rate, capacity=4096, drain_timeout=DRAIN_TIMEOUT)
    async with readers(code, pub, 4):
        assert await clock_mode(pub) == mode
        # Four seconds of samples with all four reading: long enough for a loop that cannot
        # keep up to fall behind its timer for good. (Before libkiki.signals, the publisher
        # then deadlocked in CPython's signal handler, which reports a full wake-up fd through
        # a lock the interrupted thread held: it answered nothing, and no SIGTERM ever again.)
        try:
            async with asyncio.timeout(60), SensorClient(pub.socket) as client:

                async def written() -> int:
                    return int((await client.stats())["sensors"]["imu0"]["written"])

                until = await written() + 4 * rate
                while await written() < until:  # noqa: ASYNC110 -- asking the publisher
                    await asyncio.sleep(0.1)
        except Timeout:
            pytest.fail(f"the publisher ({mode}) stopped answering under load")
        pub.proc.send_signal(signal.SIGTERM)
        try:
            # Bounded: the drain timeout, and time for an interpreter on a busy machine to
            # exit. A lost stop would never end.
            status = await asyncio.to_thread(pub.proc.wait, DRAIN_TIMEOUT + 30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the publisher ({mode}) outlived its SIGTERM")
        assert status == 0
        assert pub.notes.wait_for("STOPPING", "1")
