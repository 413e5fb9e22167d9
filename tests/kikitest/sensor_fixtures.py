"""Fixtures for the sensor tests (registered in tests/conftest.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SHM = Path("/dev/shm")


@dataclass
class Publisher:
    proc: subprocess.Popen[bytes]
    socket: Path
    prefix: str
    notes: Any

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rings(self) -> list[str]:
        return sorted(n for n in os.listdir(SHM) if n.startswith(self.prefix + "."))

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


def _unlink_prefix(prefix: str) -> None:
    for name in os.listdir(SHM):
        if name.startswith(prefix):
            (SHM / name).unlink(missing_ok=True)


@pytest.fixture
def shm_prefix() -> Iterator[str]:
    """A segment-name prefix of this test's own; whatever is left under it is removed after."""
    prefix = f"kt-{uuid.uuid4().hex[:10]}"
    yield prefix
    _unlink_prefix(prefix)


StartPublisher = Callable[..., Publisher]


@pytest.fixture
def start_publisher(sockdir: Path, spawn_service: Any, shm_prefix: str) -> Iterator[StartPublisher]:
    """Start kiki-sensor-publisher on an activated socket in ``sockdir``; wait for READY=1.

    Keyword arguments become ``KIKI_SENSOR_PUBLISHER_<NAME>`` settings (None: unset). Kernel
    sources are slow by default here (tests read the IMU); the broker tools are off unless
    ``broker_tools`` is set.
    """
    path = sockdir / "sensors.sock"
    listener: socket.socket | None = None

    def start(**settings: Any) -> Publisher:
        nonlocal listener
        if listener is None:
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(path))
            listener.listen(64)
        env = {
            "SHM_PREFIX": shm_prefix,
            "IMU_HZ": "1000",
            "CPU_HZ": "20",
            "MEMORY_HZ": "5",
            "PRESSURE_HZ": "5",
            "THERMAL_HZ": "5",
            "POWER_HZ": "5",
            "IIO_HZ": "5",
            "CAPACITY": "1024",
            "BROKER_TOOLS": "false",
        }
        env.update({k.upper(): str(v) for k, v in settings.items()})
        env = {k: v for k, v in env.items() if v != "None"}  # None: leave the setting unset
        extra = {f"KIKI_SENSOR_PUBLISHER_{k}": v for k, v in env.items()}
        proc, notes = spawn_service(
            "sensor-publisher", listener=listener, fdname="sensors", extra_env=extra
        )
        notes.wait_for("READY", "1")
        return Publisher(proc, path, shm_prefix, notes)

    yield start
    if listener is not None:
        listener.close()


# A busy machine: two processes spinning on the CPU and one writing and fsyncing files (I/O and
# page-cache pressure), each in a session of its own so that the whole group is killed after;
# each also ends by itself after a minute, should the test runner die first.
_SPIN = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end:\n    pass\n"
_WRITE = (
    'end=$(($(date +%s) + 60)); while [ "$(date +%s)" -lt "$end" ]; do '
    'dd if=/dev/zero of="$0" bs=1M count=32 conv=fsync status=none; rm -f "$0"; done'
)


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """Kill ``proc``'s whole process group (it was started with ``start_new_session``)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture
def busy_machine(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(2):
            procs.append(subprocess.Popen([sys.executable, "-c", _SPIN], start_new_session=True))
        procs.append(
            subprocess.Popen(["sh", "-c", _WRITE, str(tmp_path / "io-hog")], start_new_session=True)
        )
        yield procs
    finally:
        for proc in procs:
            kill_group(proc)
