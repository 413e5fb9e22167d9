"""Who gets which ring, sans-I/O: the file-level form of the read policy, and the admission of
external sensors (who may register one, under which name, within which limits, and whether the
ring its app made is the one it was told to make).

Nothing here opens a file or a socket: the caller looks at the ring's file and passes what it
found (:class:`RingFile`); a group name is resolved by the function it is given.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Container, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from kiki_sensor_publisher.config import SensorConfig
from kiki_sensor_publisher.core import ReadPolicy, parse_principals, unknown
from kiki_sensor_publisher.sources import sensor_name
from libkiki.errors import Conflict, InvalidParams, KikiError, LimitExceeded, PermissionDenied
from libkiki.peer import PeerCred
from libkiki.principals import globs, resolve_group
from libkiki.sensors.layout import Layout
from libkiki.sensors.ring import segment_size

# An external ring may hold this many times the publisher's own `capacity`.
EXTERNAL_CAPACITY_FACTOR = 16
MAX_UNIT = 32


class RingRules:
    """The mode, group and size of a sensor's ring.

    A ring is mode 0640 in the unit's group when the read policy lets anyone read its sensor,
    0600 when it does not, and 0640 in the group ``ring_groups`` names for it when one does: so
    the file permissions say what the socket's policy says. A group is looked up when a ring is
    made (``resolve_group``), so one created after the start counts."""

    def __init__(
        self,
        config: SensorConfig,
        policy: ReadPolicy,
        *,
        resolve: Callable[[str], int | None] = resolve_group,
    ) -> None:
        self.capacity = config.capacity
        self.policy = policy
        self._groups = list(
            zip(globs(config.ring_groups), config.ring_groups.values(), strict=True)
        )
        self._resolve = resolve

    def access(self, sid: str) -> tuple[int, int]:
        """(mode, gid) of ``sid``'s ring; gid -1: the publisher's own group."""
        for glob, group in self._groups:
            if glob.match(sid):
                gid = self._resolve(group)
                if gid is None:
                    raise KikiError(f"ring_groups: no group {group!r}")
                return 0o640, gid
        return (0o640 if self.policy.open_to_all(sid) else 0o600), -1

    def own_capacity(self, rate_hz: float) -> int:
        """Records in one of the publisher's rings: at least ten seconds of a slow sensor, and
        ``capacity`` of a fast one."""
        tenfold = 1 << math.ceil(math.log2(max(rate_hz * 10, 2)))
        return min(self.capacity, max(16, tenfold))


@dataclass(frozen=True, slots=True)
class Registration:
    """An external sensor registered and not attached yet: the ring its app is to create."""

    sensor: str
    ring: str
    layout: Layout
    capacity: int
    rate_hz: float
    unit: str
    mode: int
    gid: int
    uid: int

    def answer(self) -> dict[str, Any]:
        """The answer to ``sensors/register``."""
        return {
            "sensor": self.sensor,
            "ring": self.ring,
            "capacity": self.capacity,
            "layout": self.layout.to_json(),
            "ringMode": self.mode,
            "ringGid": self.gid,
        }


@dataclass(frozen=True, slots=True)
class RingFile:
    """What the caller found at an external ring's name: its owner, mode bits and size."""

    uid: int
    mode: int
    size: int

    @classmethod
    def of(cls, st: os.stat_result) -> RingFile:
        return cls(st.st_uid, st.st_mode & 0o777, st.st_size)


class ExternalAdmission:
    """Registrations of external sensors, and the checks of the rings their apps make.

    A registration is held for the session that made it (any hashable: the connection) until it
    attaches or the session ends. Names and quotas are taken at register time, counting the
    held registrations with the attached sensors, whatever their session: two sessions cannot
    both be promised one name, nor one user more sensors than its quota.
    """

    def __init__(
        self, config: SensorConfig, rules: RingRules, prefix: str, *, own_gid: int | None = None
    ) -> None:
        self.rules = rules
        self.prefix = prefix
        self.max_capacity = config.capacity * EXTERNAL_CAPACITY_FACTOR
        self.max_external = config.max_external
        self.max_per_uid = config.max_external_per_uid
        # Root may register too, as long as anyone may: an empty list lets nobody.
        self._anyone_may = bool(config.external_writers)
        self._writers = parse_principals(config.external_writers, "external_writers")
        self._own_gid = os.getegid() if own_gid is None else own_gid
        self.held: dict[str, tuple[Hashable, Registration]] = {}

    def register(
        self,
        session: Hashable,
        peer: PeerCred,
        name: object,
        layout: Any,
        capacity: object,
        rate_hz: object,
        unit: object,
        *,
        taken: Container[str],
        attached_uids: Iterable[int],
    ) -> Registration:
        """Admit ``sensors/register``'s parameters from ``peer``, or raise why not. ``taken``:
        the sensor ids in use; ``attached_uids``: the owner uid of every attached external
        sensor."""
        if not (self._anyone_may and (peer.uid == 0 or self._writers.matches(peer))):
            raise PermissionDenied("not allowed to register sensors")
        if not isinstance(name, str) or sensor_name(name) != name:
            raise InvalidParams("name: lowercase letters, digits, '-' and '_' (at most 48)")
        if not isinstance(capacity, int) or capacity < 16 or capacity & (capacity - 1):
            raise InvalidParams("capacity must be a power of two >= 16")
        if capacity > self.max_capacity:
            raise LimitExceeded(f"capacity at most {self.max_capacity}")
        if not isinstance(unit, str) or len(unit) > MAX_UNIT:
            raise InvalidParams("unit is a short string")
        if not isinstance(rate_hz, int | float) or rate_hz < 0:
            raise InvalidParams("rateHz is a number >= 0")
        parsed = Layout.from_json(layout)
        owner = sensor_name(peer.app_id or f"uid{peer.uid}")
        sid = f"ext-{owner}-{name}"
        if sid in taken or sid in self.held:
            raise Conflict(
                f"sensor {sid} is already registered (by another connection or this one)",
                data={"sensor": sid},
            )
        uids = [*attached_uids, *(reg.uid for _, reg in self.held.values())]
        if len(uids) >= self.max_external:
            raise LimitExceeded(f"at most {self.max_external} external sensors")
        if uids.count(peer.uid) >= self.max_per_uid:
            raise LimitExceeded(f"at most {self.max_per_uid} sensors per user")
        # The file-level form of the read policy, as for the publisher's own rings: the app
        # sets it on its ring (the group if it is a member of it), attach checks it.
        mode, gid = self.rules.access(sid)
        reg = Registration(
            sensor=sid,
            ring=f"{self.prefix}-ext.{peer.uid}.{sid}",
            layout=parsed,
            capacity=capacity,
            rate_hz=float(rate_hz),
            unit=unit,
            mode=mode,
            gid=self._own_gid if gid == -1 else gid,  # the unit's group, as our own rings'
            uid=peer.uid,
        )
        self.held[sid] = (session, reg)
        return reg

    def held_by(self, session: Hashable, sid: str) -> Registration:
        """``session``'s registration of ``sid``; :class:`NotFound` if it has none."""
        entry = self.held.get(sid)
        if entry is None or entry[0] is not session:
            raise unknown(sid)
        return entry[1]

    @staticmethod
    def check_ring(reg: Registration, peer: PeerCred, found: RingFile) -> None:
        """Whether the file at ``reg.ring`` is fit to be attached, as ``peer``'s sensor."""
        if found.uid != peer.uid:
            raise PermissionDenied(f"{reg.ring} does not belong to you")
        if found.mode & ~reg.mode:
            raise PermissionDenied(
                f"{reg.ring} has mode {found.mode:04o}; this sensor's read policy allows "
                f"at most {reg.mode:04o}"
            )
        if found.size != segment_size(reg.layout, reg.capacity):
            raise InvalidParams(f"{reg.ring} is not a ring of {reg.capacity} records of its layout")

    def attached(self, sid: str) -> None:
        """``sid``'s ring checked and in use: no longer held (its sensor counts instead)."""
        self.held.pop(sid, None)

    def session_ended(self, session: Hashable) -> list[str]:
        """Release what ``session`` held; returns the sensor ids released."""
        gone = [sid for sid, (s, _) in self.held.items() if s is session]
        for sid in gone:
            del self.held[sid]
        return gone
