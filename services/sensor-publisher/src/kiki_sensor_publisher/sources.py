"""Where samples come from: the kernel's /proc and /sys files, and a synthetic IMU.

Parsing is pure (text in, values out) and tested on its own; a :class:`Source` reads its files
when sampled and yields ``(sensor id, values)`` pairs. Files a kernel does not have (no thermal
zone, no battery, no IIO device) simply mean no sensor.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libkiki.sensors.layout import (
    CPU_LOAD,
    IMU6,
    MEMORY,
    POWER_SUPPLY,
    PRESSURE,
    TEMPERATURE,
    Field,
    Layout,
)

log = logging.getLogger(__name__)

NAN = float("nan")
_SAFE = re.compile(r"[^a-z0-9_-]+")
_FIELD_SAFE = re.compile(r"[^a-z0-9_]+")  # a layout's field names: no '-'


def sensor_name(text: str) -> str:
    return _SAFE.sub("-", text.strip().lower()).strip("-")[:48] or "unnamed"


# -- pure parsers -----------------------------------------------------------------------------


def parse_proc_stat(text: str) -> dict[str, tuple[int, ...]]:
    """``cpu`` and ``cpuN`` lines of /proc/stat: name -> jiffies per state."""
    out: dict[str, tuple[int, ...]] = {}
    for line in text.splitlines():
        if line.startswith("cpu"):
            name, *fields = line.split()
            out[name] = tuple(int(f) for f in fields[:10]) + (0,) * max(0, 8 - len(fields))
    return out


def cpu_load(before: tuple[int, ...], after: tuple[int, ...]) -> tuple[float, ...]:
    """(busy, user, system, iowait, irq, steal) shares between two /proc/stat readings."""
    d = [max(0, a - b) for a, b in zip(after[:8], before[:8], strict=True)]
    user, nice, system, idle, iowait, irq, softirq, steal = d
    total = sum(d)
    if total == 0:
        return (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    busy = total - idle - iowait
    return (
        busy / total,
        (user + nice) / total,
        system / total,
        iowait / total,
        (irq + softirq) / total,
        steal / total,
    )


_MEMINFO_KEYS = ("MemTotal", "MemAvailable", "MemFree", "Cached", "SwapTotal", "SwapFree")


def parse_meminfo(text: str) -> tuple[int, ...]:
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            factor = 1024 if len(parts) > 1 and parts[1] == "kB" else 1
            values[key] = int(parts[0]) * factor
    return tuple(values.get(k, 0) for k in _MEMINFO_KEYS)


def parse_pressure(text: str) -> tuple[float | int, ...]:
    """A /proc/pressure/* file: some/full avg10, avg60, avg300 (%), total (us)."""
    rows: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        kind, *pairs = line.split()
        rows[kind] = dict(p.split("=", 1) for p in pairs if "=" in p)
    out: list[float | int] = []
    for kind in ("some", "full"):
        row = rows.get(kind, {})
        out += [float(row.get(k, 0.0)) for k in ("avg10", "avg60", "avg300")]
        out.append(int(row.get("total", 0)))
    return tuple(out)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _number(path: Path) -> float | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return float(text.strip())
    except ValueError:
        return None


# -- sources ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SensorSpec:
    """A sensor as its source declares it."""

    id: str
    kind: str
    unit: str
    layout: Layout
    rate_hz: float


class Source:
    """A group of sensors read together at one rate."""

    name = "source"
    rate_hz = 1.0

    def sensors(self) -> list[SensorSpec]:
        raise NotImplementedError

    def sample(self) -> Iterator[tuple[str, tuple[Any, ...]]]:
        raise NotImplementedError


class CpuSource(Source):
    name = "cpu"

    def __init__(self, proc: Path, rate_hz: float) -> None:
        self.path = proc / "stat"
        self.rate_hz = rate_hz
        self._last = parse_proc_stat(_read(self.path) or "")

    def sensors(self) -> list[SensorSpec]:
        return [SensorSpec(n, "load", "1", CPU_LOAD, self.rate_hz) for n in self._last]

    def sample(self) -> Iterator[tuple[str, tuple[Any, ...]]]:
        now = parse_proc_stat(_read(self.path) or "")
        for name, jiffies in now.items():
            before = self._last.get(name)
            if before is not None:
                yield name, cpu_load(before, jiffies)
        self._last = now


class MemorySource(Source):
    name = "memory"

    def __init__(self, proc: Path, rate_hz: float) -> None:
        self.path = proc / "meminfo"
        self.rate_hz = rate_hz

    def sensors(self) -> list[SensorSpec]:
        if _read(self.path) is None:
            return []
        return [SensorSpec("memory", "memory", "B", MEMORY, self.rate_hz)]

    def sample(self) -> Iterator[tuple[str, tuple[Any, ...]]]:
        text = _read(self.path)
        if text is not None:
            yield "memory", parse_meminfo(text)


class PressureSource(Source):
    name = "pressure"

    def __init__(self, proc: Path, rate_hz: float) -> None:
        self.dir = proc / "pressure"
        self.rate_hz = rate_hz
        self.resources = [
            r for r in ("cpu", "memory", "io", "irq") if _read(self.dir / r) is not None
        ]

    def sensors(self) -> list[SensorSpec]:
        return [
            SensorSpec(f"pressure-{r}", "pressure", "%", PRESSURE, self.rate_hz)
            for r in self.resources
        ]

    def sample(self) -> Iterator[tuple[str, tuple[Any, ...]]]:
        for r in self.resources:
            text = _read(self.dir / r)
            if text is not None:
                yield f"pressure-{r}", parse_pressure(text)


class ThermalSource(Source):
    name = "thermal"

    def __init__(self, sys: Path, rate_hz: float) -> None:
        self.rate_hz = rate_hz
        self.zones: dict[str, Path] = {}
        base = sys / "class" / "thermal"
        for zone in sorted(base.glob("thermal_zone*")) if base.is_dir() else []:
            kind = sensor_name(_read(zone / "type") or zone.name)
            name = f"thermal-{kind}"
            if name in self.zones:
                name = f"thermal-{kind}-{zone.name.removeprefix('thermal_zone')}"
            self.zones[name] = zone / "temp"

    def sensors(self) -> list[SensorSpec]:
        return [SensorSpec(n, "temperature", "Cel", TEMPERATURE, self.rate_hz) for n in self.zones]

    def sample(self) -> Iterator[tuple[str, tuple[Any, ...]]]:
        for name, path in self.zones.items():
            milli = _number(path)
            if milli is not None:
                yield name, (milli / 1000.0,)


class PowerSource(Source):
    name = "power"

    def __init__(self, sys: Path, rate_hz: float) -> None:
        self.rate_hz = rate_hz
        base = sys / "class" / "power_supply"
        self.supplies = {
            f"power-{sensor_name(p.name)}": p
            for p in (sorted(base.iterdir()) if base.is_dir() else [])
        }

    def sensors(self) -> list[SensorSpec]:
        return [SensorSpec(n, "battery", "", POWER_SUPPLY, self.rate_hz) for n in self.supplies]

    def sample(self) -> Iterator[tuple[str, tuple[Any, ...]]]:
        for name, p in self.supplies.items():
            yield name, power_values(p)


def power_values(p: Path) -> tuple[float, ...]:
    def micro(name: str) -> float:
        v = _number(p / name)
        return NAN if v is None else v / 1e6

    online = _number(p / "online")
    if online is None:
        status = (_read(p / "status") or "").strip()
        online = NAN if not status else float(status in ("Charging", "Full", "Not charging"))
    capacity = _number(p / "capacity")
    voltage, current = micro("voltage_now"), micro("current_now")
    power = micro("power_now")
    if math.isnan(power) and not (math.isnan(voltage) or math.isnan(current)):
        power = voltage * current
    return (online, NAN if capacity is None else capacity, voltage, current, power)


@dataclass
class IioDevice:
    id: str
    channels: list[tuple[str, Path, float, float]] = field(default_factory=list)

    @property
    def layout(self) -> Layout:
        return Layout(
            f"iio-{self.id.removeprefix('iio-')}".replace("_", "-")[:64],
            tuple(Field(c[0], "f64", "") for c in self.channels),
            "IIO channels, raw value plus offset times scale",
            6,
        )


class IioSource(Source):
    """``/sys/bus/iio/devices/iio:deviceN/in_*_raw`` with their ``_scale`` and ``_offset``."""

    name = "iio"

    def __init__(self, sys: Path, rate_hz: float) -> None:
        self.rate_hz = rate_hz
        self.devices: list[IioDevice] = []
        base = sys / "bus" / "iio" / "devices"
        for dev in sorted(base.glob("iio:device*")) if base.is_dir() else []:
            # One device in a shape we did not expect costs that device, never the service.
            try:
                device = self._device(dev, {d.id for d in self.devices})
            except Exception as exc:
                log.warning("iio: skipping %s: %s", dev.name, exc)
                continue
            if device is not None:
                self.devices.append(device)

    @staticmethod
    def _device(dev: Path, taken: set[str]) -> IioDevice | None:
        label = sensor_name(_read(dev / "name") or dev.name.replace(":", "-"))
        sid = f"iio-{label}"
        if sid in taken:  # two devices of one name (two identical chips): the index tells
            sid = f"iio-{label}-{dev.name.removeprefix('iio:device')}"[:64]
        if sid in taken:
            log.warning("iio: skipping %s: its sensor id %s is taken", dev.name, sid)
            return None
        device = IioDevice(sid)
        for raw in sorted(dev.glob("in_*_raw")):
            chan = raw.name.removeprefix("in_").removesuffix("_raw")
            stem = raw.name.removesuffix("_raw")
            scale = _number(dev / f"{stem}_scale")
            if scale is None:
                scale = _number(dev / f"in_{chan.rsplit('_', 1)[0]}_scale") or 1.0
            offset = _number(dev / f"{stem}_offset") or 0.0
            # in_voltage0-voltage1_raw (a differential channel): voltage0_voltage1.
            name = _FIELD_SAFE.sub("_", chan.lower()).strip("_")[:32] or "value"
            if not name[0].isalpha():
                name = f"c_{name}"[:32]
            device.channels.append((name, raw, scale, offset))
        if not device.channels:
            return None
        if len({c[0] for c in device.channels}) != len(device.channels):
            log.warning("iio: skipping %s: two channels with one field name", dev.name)
            return None
        device.layout  # noqa: B018 -- builds and checks the layout now, not at publish time
        return device

    def sensors(self) -> list[SensorSpec]:
        return [SensorSpec(d.id, "iio", "", d.layout, self.rate_hz) for d in self.devices]

    def sample(self) -> Iterator[tuple[str, tuple[Any, ...]]]:
        for dev in self.devices:
            values = []
            for _, raw, scale, offset in dev.channels:
                v = _number(raw)
                values.append(NAN if v is None else (v + offset) * scale)
            yield dev.id, tuple(values)


class SyntheticImu:
    """An IMU-like signal: gravity plus slow rotation and a little deterministic wobble.

    Values are a pure function of the sample index, so a test can check every sample."""

    def __init__(self, rate_hz: float) -> None:
        self.rate_hz = rate_hz
        self.spec = SensorSpec("imu0", "imu", "", IMU6, rate_hz)

    def values(self, n: int) -> tuple[float, ...]:
        t = n / self.rate_hz
        w = 2 * math.pi * 0.5 * t
        return (
            0.3 * math.sin(w),
            0.3 * math.cos(w),
            9.81 + 0.05 * math.sin(7 * w),
            0.1 * math.cos(3 * w),
            0.1 * math.sin(3 * w),
            (n % 1000) / 1000.0,
        )


def kernel_sources(
    proc: Path,
    sys: Path,
    *,
    cpu_hz: float,
    memory_hz: float,
    pressure_hz: float,
    thermal_hz: float,
    power_hz: float,
    iio_hz: float,
) -> list[Source]:
    sources: list[Source] = []
    makers: list[tuple[float, Any, Path]] = [
        (cpu_hz, CpuSource, proc),
        (memory_hz, MemorySource, proc),
        (pressure_hz, PressureSource, proc),
        (thermal_hz, ThermalSource, sys),
        (power_hz, PowerSource, sys),
        (iio_hz, IioSource, sys),
    ]
    for rate, make, root in makers:
        if rate > 0:
            # A source that cannot set up (a kernel tree in a shape we did not expect) is
            # logged and skipped: never the reason the publisher does not start.
            try:
                source = make(root, rate)
                if source.sensors():
                    sources.append(source)
            except Exception:
                log.exception("source %s skipped: it could not set up", make.name)
    return sources
