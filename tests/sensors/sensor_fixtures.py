"""Fixtures for the sensor tests (registered in tests/conftest.py)."""

from __future__ import annotations

import os
import socket
import subprocess
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
    sources are slow by default here (tests read the IMU); the broker is off unless
    ``broker_socket`` is set.
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
            "BROKER_SOCKET": "",
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
