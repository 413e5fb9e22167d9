"""Parsing the kernel's files, on this machine's /proc and on sysfs trees written here
(this machine has no thermal zone, battery or IIO device)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from kiki_sensor_publisher.sources import (
    CpuSource,
    IioSource,
    MemorySource,
    PowerSource,
    PressureSource,
    ThermalSource,
    cpu_load,
    kernel_sources,
    parse_meminfo,
    parse_pressure,
    parse_proc_stat,
)
from libkiki.sensors.ring import RingReader, RingWriter, segment_size

pytestmark = pytest.mark.unit

STAT = """cpu  100 0 50 800 50 0 0 0 0 0
cpu0 60 0 20 400 20 0 0 0 0 0
cpu1 40 0 30 400 30 0 0 0 0 0
intr 12345
"""
STAT2 = """cpu  160 0 70 880 50 10 0 30 0 0
cpu0 100 0 30 440 20 10 0 0 0 0
cpu1 60 0 40 440 30 0 0 30 0 0
"""


def test_proc_stat_and_load() -> None:
    before, after = parse_proc_stat(STAT), parse_proc_stat(STAT2)
    assert set(before) == {"cpu", "cpu0", "cpu1"}
    busy, user, system, iowait, irq, steal = cpu_load(before["cpu"], after["cpu"])
    assert busy == pytest.approx(120 / 200)  # 60 user + 20 system + 10 irq + 30 steal
    assert (user, system, iowait, irq, steal) == pytest.approx((0.3, 0.1, 0.0, 0.05, 0.15))
    assert cpu_load(before["cpu"], before["cpu"]) == (0.0,) * 6


def test_meminfo_and_pressure() -> None:
    text = "MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 500 kB\nCached: 7 kB\nHuge: x\n"
    assert parse_meminfo(text) == (1024000, 512000, 102400, 7168, 0, 0)
    psi = (
        "some avg10=1.50 avg60=0.75 avg300=0.10 total=12345\n"
        "full avg10=0.00 avg60=0.01 avg300=0.02 total=99\n"
    )
    assert parse_pressure(psi) == (1.5, 0.75, 0.1, 12345, 0.0, 0.01, 0.02, 99)
    assert parse_pressure("some avg10=2.00 avg60=0 avg300=0 total=5\n")[4:] == (0.0, 0.0, 0.0, 0)


def test_this_machines_proc() -> None:
    proc = Path("/proc")
    cpu = CpuSource(proc, 10)
    names = {s.id for s in cpu.sensors()}
    assert "cpu" in names
    assert "cpu0" in names
    for _, values in cpu.sample():
        assert all(0.0 <= v <= 1.0 for v in values)
    (mem,) = MemorySource(proc, 1).sample()
    assert mem[1][0] > 0
    psi = PressureSource(proc, 1)
    assert {s.id for s in psi.sensors()} >= {"pressure-cpu", "pressure-memory", "pressure-io"}


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_thermal_power_and_iio_trees(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "class/thermal/thermal_zone0/type": "x86_pkg_temp\n",
            "class/thermal/thermal_zone0/temp": "45500\n",
            "class/thermal/thermal_zone1/type": "acpitz\n",
            "class/thermal/thermal_zone1/temp": "garbage\n",
            "class/power_supply/BAT0/status": "Discharging\n",
            "class/power_supply/BAT0/capacity": "81\n",
            "class/power_supply/BAT0/voltage_now": "12000000\n",
            "class/power_supply/BAT0/current_now": "1500000\n",
            "class/power_supply/AC/online": "1\n",
            "bus/iio/devices/iio:device0/name": "accel_3d\n",
            "bus/iio/devices/iio:device0/in_accel_x_raw": "100\n",
            "bus/iio/devices/iio:device0/in_accel_y_raw": "-50\n",
            "bus/iio/devices/iio:device0/in_accel_scale": "0.01\n",
            "bus/iio/devices/iio:device0/in_accel_y_offset": "10\n",
            "bus/iio/devices/iio:device1/in_illuminance_raw": "300\n",
        },
    )
    thermal = ThermalSource(tmp_path, 1)
    assert [s.id for s in thermal.sensors()] == ["thermal-x86_pkg_temp", "thermal-acpitz"]
    assert list(thermal.sample()) == [("thermal-x86_pkg_temp", (45.5,))]  # unreadable: skipped

    power = dict(PowerSource(tmp_path, 1).sample())
    online, capacity, volts, amps, watts = power["power-bat0"]
    assert (online, capacity, volts, amps, watts) == (0.0, 81.0, 12.0, 1.5, 18.0)
    ac = power["power-ac"]
    assert ac[0] == 1.0
    assert all(math.isnan(v) for v in ac[1:])

    iio = IioSource(tmp_path, 10)
    specs = {s.id: s for s in iio.sensors()}
    assert set(specs) == {"iio-accel_3d", "iio-iio-device1"}
    assert specs["iio-accel_3d"].layout.names == ("accel_x", "accel_y")
    values = dict(iio.sample())
    assert values["iio-accel_3d"] == pytest.approx((1.0, -0.4))
    assert values["iio-iio-device1"] == (300.0,)
    # Derived layouts are real layouts: a ring can carry them.
    layout = specs["iio-accel_3d"].layout
    buf = bytearray(segment_size(layout, 4))
    RingWriter(buf, layout, 4).write(1, values["iio-accel_3d"])
    assert RingReader(buf, layout).read(0).rows() == [pytest.approx((1.0, -0.4))]


def test_missing_sources_mean_no_sensors(tmp_path: Path) -> None:
    sources = kernel_sources(
        tmp_path / "proc",
        tmp_path / "sys",
        cpu_hz=1,
        memory_hz=1,
        pressure_hz=1,
        thermal_hz=1,
        power_hz=1,
        iio_hz=1,
    )
    assert sources == []
    # A rate of 0 turns a source off even where the kernel has it.
    on = kernel_sources(
        Path("/proc"),
        tmp_path,
        cpu_hz=0,
        memory_hz=1,
        pressure_hz=0,
        thermal_hz=0,
        power_hz=0,
        iio_hz=0,
    )
    assert [s.name for s in on] == ["memory"]


IIO_TREE = {
    # A differential channel, whose name is not a valid field name as it stands.
    "bus/iio/devices/iio:device0/name": "ads1015\n",
    "bus/iio/devices/iio:device0/in_voltage0-voltage1_raw": "200\n",
    "bus/iio/devices/iio:device0/in_voltage0-voltage1_scale": "0.5\n",
    "bus/iio/devices/iio:device0/in_voltage2_raw": "4\n",
    # Two chips of one name.
    "bus/iio/devices/iio:device1/name": "bmi160\n",
    "bus/iio/devices/iio:device1/in_accel_x_raw": "1\n",
    "bus/iio/devices/iio:device2/name": "bmi160\n",
    "bus/iio/devices/iio:device2/in_accel_x_raw": "2\n",
}


def test_iio_differential_channels_and_devices_of_one_name(tmp_path: Path) -> None:
    _write(tmp_path, IIO_TREE)
    iio = IioSource(tmp_path, 10)
    specs = {s.id: s for s in iio.sensors()}
    assert set(specs) == {"iio-ads1015", "iio-bmi160", "iio-bmi160-2"}
    assert specs["iio-ads1015"].layout.names == ("voltage0_voltage1", "voltage2")
    values = dict(iio.sample())
    assert values == {
        "iio-ads1015": (100.0, 4.0),
        "iio-bmi160": (1.0,),
        "iio-bmi160-2": (2.0,),
    }


def test_a_source_that_cannot_set_up_is_skipped(tmp_path: Path) -> None:
    # Two channels that sanitize to one field name: that device is skipped, not fatal.
    _write(
        tmp_path / "sys",
        {
            "bus/iio/devices/iio:device0/in_a-b_raw": "1\n",
            "bus/iio/devices/iio:device0/in_a_b_raw": "2\n",
            "bus/iio/devices/iio:device1/in_temp_raw": "3\n",
        },
    )
    sources = kernel_sources(
        tmp_path / "proc",
        tmp_path / "sys",
        cpu_hz=0,
        memory_hz=0,
        pressure_hz=0,
        thermal_hz=0,
        power_hz=0,
        iio_hz=1,
    )
    assert [s.name for s in sources] == ["iio"]
    assert [s.id for s in sources[0].sensors()] == ["iio-iio-device1"]
