"""The publisher's own sensors without a socket: rings made at the start from a kernel tree
written by the test (an earlier run's ring retired first), a sensor whose ring cannot be set up
skipped, and a source's loop writing and publishing its samples."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from kiki_sensor_publisher.admission import RingRules
from kiki_sensor_publisher.builtin import open_builtin, run_source
from kiki_sensor_publisher.catalog import Catalog
from kiki_sensor_publisher.config import SensorConfig
from kiki_sensor_publisher.core import ReadPolicy
from kiki_sensor_publisher.rings import Sensor
from libkiki.sensors.layout import MEMORY
from libkiki.sensors.ring import RingChanged
from libkiki.sensors.shm import SHM_DIR, MappedReader, MappedWriter

pytestmark = pytest.mark.unit

STAT = "cpu  10 0 10 80 0 0 0 0 0 0\ncpu0 10 0 10 80 0 0 0 0 0 0\n"
MEMINFO = "MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 500 kB\nCached: 7 kB\n"


def kernel_tree(tmp_path: Path) -> tuple[Path, Path]:
    proc, sys = tmp_path / "proc", tmp_path / "sys"
    proc.mkdir()
    sys.mkdir()
    (proc / "stat").write_text(STAT)
    (proc / "meminfo").write_text(MEMINFO)
    return proc, sys


def setup(tmp_path: Path, shm_prefix: str, **settings: object) -> tuple[Catalog, SensorConfig]:
    proc, sys = kernel_tree(tmp_path)
    config = SensorConfig.model_validate(
        {
            "imu_hz": 0,
            "cpu_hz": 10,
            "memory_hz": 1000,
            "capacity": 1024,
            "proc_root": proc,
            "sys_root": sys,
            "shm_prefix": shm_prefix,
            **settings,
        }
    )
    return Catalog(ReadPolicy(config.read_policy)), config


def test_own_rings_replace_an_earlier_runs(tmp_path: Path, shm_prefix: str) -> None:
    catalog, config = setup(tmp_path, shm_prefix, ring_groups={"cpu0": "no-such-group-here"})
    stale = MappedWriter(f"{shm_prefix}.memory", MEMORY, 16)
    follower = MappedReader(stale.name, MEMORY, owner=os.geteuid())
    try:
        rules = RingRules(config, ReadPolicy(config.read_policy))
        builtin = open_builtin(config, catalog, rules, shm_prefix)
        with pytest.raises(RingChanged):  # retired: its readers move on to the new ring
            follower.ring.latest(1)
        assert builtin.imu is None
        assert {s.name for s in builtin.sources} == {"cpu", "memory"}
        # cpu0's ring could not have its group: that sensor alone is skipped.
        assert sorted(s.id for s in catalog) == ["cpu", "memory"]
        memory = catalog.get("memory")
        assert memory is not None
        assert memory.capacity == 1024  # capacity, for a fast sensor
        assert (SHM_DIR / memory.ring).stat().st_mode & 0o777 == 0o640
        reader = MappedReader(memory.ring, MEMORY, owner=os.geteuid())
        reader.close()
    finally:
        follower.close()
        stale.close(unlink=False)
        catalog.close()


async def test_a_source_writes_and_publishes_each_sample(tmp_path: Path, shm_prefix: str) -> None:
    catalog, config = setup(tmp_path, shm_prefix)
    builtin = open_builtin(
        config, catalog, RingRules(config, ReadPolicy(config.read_policy)), shm_prefix
    )
    try:
        memory = next(s for s in builtin.sources if s.name == "memory")
        published: list[tuple[str, int]] = []
        three = asyncio.Event()

        def publish(sensor: Sensor) -> None:
            published.append((sensor.id, sensor.write_index))
            if len(published) == 3:
                three.set()

        task = asyncio.create_task(run_source(memory, catalog, publish))
        async with asyncio.timeout(10):
            await three.wait()
        task.cancel()
        assert published[:3] == [("memory", 1), ("memory", 2), ("memory", 3)]
        ring = catalog.get("memory")
        assert ring is not None
        assert ring.latest(1).rows()[0][0] == 1024000  # MemTotal, in bytes
    finally:
        catalog.close()
