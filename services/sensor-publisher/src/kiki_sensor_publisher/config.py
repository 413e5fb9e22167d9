"""The publisher's settings: ``/etc/kiki/sensor-publisher.toml`` or
``KIKI_SENSOR_PUBLISHER_<FIELD>`` (e.g. ``KIKI_SENSOR_PUBLISHER_IMU_HZ=200``)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

import pydantic

from libkiki.config import ServiceConfig
from libkiki.paths import runtime_dir

MAX_RATE_HZ = 20_000.0
# Bounds of what the configuration may hold: far above any real use, so that a mistaken value
# is refused at load rather than costing memory or time per request.
MAX_RULES = 1024  # entries of read_policy, ring_groups, external_writers
MAX_PRINCIPALS = 256  # principals of one read_policy rule
MAX_EXTERNAL = 4096
MAX_SUBSCRIPTIONS = 1 << 16

Glob = Annotated[str, pydantic.StringConstraints(min_length=1, max_length=255)]
PrincipalText = Annotated[str, pydantic.StringConstraints(max_length=255)]
GroupName = Annotated[str, pydantic.StringConstraints(min_length=1, max_length=255)]


class SensorConfig(ServiceConfig):
    # Rates in Hz; 0 turns a source off.
    imu_hz: float = pydantic.Field(default=1000.0, ge=0, le=MAX_RATE_HZ)
    cpu_hz: float = pydantic.Field(default=10.0, ge=0, le=1000)
    memory_hz: float = pydantic.Field(default=2.0, ge=0, le=1000)
    pressure_hz: float = pydantic.Field(default=2.0, ge=0, le=1000)
    thermal_hz: float = pydantic.Field(default=1.0, ge=0, le=1000)
    power_hz: float = pydantic.Field(default=0.5, ge=0, le=1000)
    iio_hz: float = pydantic.Field(default=50.0, ge=0, le=10000)
    # Records per ring: a power of two; a reader may be this many samples behind.
    capacity: int = pydantic.Field(default=4096, ge=16, le=1 << 20)
    # Segment names are <shm_prefix>.<sensor>; everything with this prefix is the publisher's
    # to clean up at start. Unset: "kiki-sensors" for /run/kiki, and a name derived from the
    # runtime directory otherwise, so that developer constellations never share rings.
    shm_prefix: str | None = pydantic.Field(
        default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$", max_length=64
    )
    # Where the kernel sources read (a test's tree instead of the kernel's).
    proc_root: Path = Path("/proc")
    sys_root: Path = Path("/sys")
    # Who may read which sensor: sensor glob -> principals (uid:N, user:NAME, gid:N,
    # group:NAME, *). First matching glob decides; root may read everything.
    read_policy: dict[
        Glob, Annotated[list[PrincipalText], pydantic.Field(max_length=MAX_PRINCIPALS)]
    ] = pydantic.Field(default_factory=lambda: {"*": ["*"]}, max_length=MAX_RULES)
    # Sensor glob -> the group its ring belongs to (the publisher must be a member). A ring is
    # mode 0640 in the unit's group when read_policy lets anyone read its sensor, 0600 when it
    # does not, and 0640 in the group named here when one is: so the file permissions say what
    # the socket's policy says, and readers who may not read a sensor cannot map its ring.
    ring_groups: dict[Glob, GroupName] = pydantic.Field(default_factory=dict, max_length=MAX_RULES)
    # Who may register an external sensor, and how many (per peer uid and in all).
    external_writers: list[PrincipalText] = pydantic.Field(
        default_factory=lambda: ["*"], max_length=MAX_RULES
    )
    max_external_per_uid: int = pydantic.Field(default=8, ge=0, le=MAX_EXTERNAL)
    max_external: int = pydantic.Field(default=64, ge=0, le=MAX_EXTERNAL)
    max_subscriptions: int = pydantic.Field(default=256, ge=1, le=MAX_SUBSCRIPTIONS)
    # Subscriptions one user (peer uid) may hold across its connections, so that no one user
    # takes the whole pool; 0: no limit of its own.
    max_subscriptions_per_uid: int = pydantic.Field(default=128, ge=0, le=MAX_SUBSCRIPTIONS)
    # A batched subscriber asks for at most this many wake-ups per second (no more than a
    # sensor can be sampled).
    max_wakeups_hz: float = pydantic.Field(default=10_000.0, gt=0, le=MAX_RATE_HZ)
    # Offer dev.kiki.sensor.* tools on the tool broker, registering again whenever it comes
    # back (libkiki's ToolProvider.keep_registered); false: no broker tools.
    broker_tools: bool = True
    # The broker's socket; unset: tools.sock in the runtime directory.
    broker_socket: str | None = pydantic.Field(default=None, max_length=4096)  # PATH_MAX

    def ring_prefix(self) -> str:
        if self.shm_prefix:
            return self.shm_prefix
        where = str(runtime_dir())
        if where == "/run/kiki":
            return "kiki-sensors"
        return "kiki-sensors-" + hashlib.sha256(where.encode()).hexdigest()[:10]

    @pydantic.field_validator("broker_socket")
    @classmethod
    def _a_path(cls, value: str | None) -> str | None:
        # An empty value once switched the broker tools off; now that is broker_tools = false,
        # and taking "" for the default socket would switch them on without a word.
        if value == "":
            raise ValueError(
                "empty: leave it unset for tools.sock; broker_tools = false switches the tools off"
            )
        return value

    @pydantic.field_validator("capacity")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("capacity must be a power of two")
        return value
