"""The publisher's own sensors: their rings made at the start, and the kernel sources sampled
at their rates into them (the synthetic IMU has a clock of its own, :mod:`.clock`).

One sensor that cannot be set up (its id taken, its layout or group refused) is logged and
skipped; one source that fails is logged once per run of failures and keeps trying: neither is
ever the reason the publisher does not start or stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kiki_sensor_publisher.admission import RingRules
from kiki_sensor_publisher.catalog import Catalog
from kiki_sensor_publisher.config import SensorConfig
from kiki_sensor_publisher.rings import Sensor, clean_stale
from kiki_sensor_publisher.sources import SensorSpec, Source, SyntheticImu, kernel_sources
from libkiki.errors import KikiError

log = logging.getLogger(__name__)


@dataclass
class Builtin:
    """What :func:`open_builtin` set up: the IMU (its ring and signal) and the kernel sources."""

    imu: tuple[Sensor, SyntheticImu] | None = None
    sources: list[Source] = field(default_factory=list)


def open_builtin(config: SensorConfig, catalog: Catalog, rules: RingRules, prefix: str) -> Builtin:
    """Retire an earlier run's rings under ``prefix``, then make one ring per sensor."""
    cleaned = clean_stale(prefix)
    if cleaned:
        log.info("retired %d stale ring(s) of an earlier run", len(cleaned))
    out = Builtin()

    def create(spec: SensorSpec) -> Sensor:
        mode, gid = rules.access(spec.id)
        sensor = Sensor.create(
            spec.id,
            spec.kind,
            spec.unit,
            spec.layout,
            spec.rate_hz,
            f"{prefix}.{spec.id}",
            rules.own_capacity(spec.rate_hz),
            mode=mode,
            gid=gid,
        )
        catalog.add(sensor)
        return sensor

    if config.imu_hz > 0:
        imu = SyntheticImu(config.imu_hz)
        out.imu = (create(imu.spec), imu)
    out.sources = kernel_sources(
        config.proc_root,
        config.sys_root,
        cpu_hz=config.cpu_hz,
        memory_hz=config.memory_hz,
        pressure_hz=config.pressure_hz,
        thermal_hz=config.thermal_hz,
        power_hz=config.power_hz,
        iio_hz=config.iio_hz,
    )
    for source in out.sources:
        # The source's samples for a sensor skipped here are dropped (run_source finds no ring).
        try:
            specs = source.sensors()
        except Exception:
            log.exception("source %s skipped: its sensors could not be listed", source.name)
            continue
        for spec in specs:
            if spec.id in catalog:
                log.warning("source %s: sensor %s exists; skipped", source.name, spec.id)
                continue
            try:
                create(spec)
            except (KikiError, OSError) as exc:
                log.warning("source %s: sensor %s skipped: %s", source.name, spec.id, exc)
    return out


async def run_source(source: Source, catalog: Catalog, publish: Callable[[Sensor], None]) -> None:
    """Sample ``source`` at its rate for ever, writing each sample to its sensor's ring and
    ``publish``-ing it. A late tick is not made up for: the next one is a period later."""
    loop = asyncio.get_running_loop()
    period = 1.0 / source.rate_hz
    deadline = loop.time()
    failing = False
    while True:
        now_ns = time.monotonic_ns()
        try:
            for sid, values in source.sample():
                sensor = catalog.get(sid)
                if sensor is not None and sensor.writer is not None:
                    sensor.writer.write(now_ns, values)
                    publish(sensor)
            failing = False
        except Exception:
            # A kernel file in a shape we did not expect costs that source its samples,
            # never the service; logged once per run of failures.
            if not failing:
                log.exception("source %s failed; it keeps trying", source.name)
            failing = True
        deadline += period
        delay = deadline - loop.time()
        if delay < 0:
            deadline = loop.time()
            delay = 0
        await asyncio.sleep(delay)
