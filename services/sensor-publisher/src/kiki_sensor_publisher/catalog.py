"""The sensors the publisher serves, by id, and the answers made from them for a peer.

What a peer may see (the read policy), its views, samples and stats: the same answers whether
they go out on the notify socket or through the broker tools, which talk to this and nothing
else of the service. No sockets and no tasks here: reading a ring is a copy out of shared
memory (or a ``pread`` of an external sensor's file).

An external sensor's app may break its ring (truncate it, scribble on it) at any moment: every
read of one goes through :meth:`Catalog.guard`, which hands a broken one to ``on_broken`` (the
server drops it and tells its subscribers) and answers an :class:`InvalidFrame`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from kiki_sensor_publisher.core import ReadPolicy, WakeCore, read_params, unknown
from kiki_sensor_publisher.rings import Sensor
from libkiki.errors import InvalidFrame, InvalidParams, PermissionDenied
from libkiki.peer import PeerCred
from libkiki.sensors.ring import Batch

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class Catalog:
    def __init__(self, policy: ReadPolicy) -> None:
        self.policy = policy
        self.sensors: dict[str, Sensor] = {}
        # Set by the server: what becomes of an external sensor whose ring is found broken.
        self.on_broken: Callable[[Sensor], None] = self.remove

    def __len__(self) -> int:
        return len(self.sensors)

    def __contains__(self, sid: object) -> bool:
        return sid in self.sensors

    def __iter__(self) -> Iterator[Sensor]:
        return iter(list(self.sensors.values()))

    def get(self, sid: str) -> Sensor | None:
        return self.sensors.get(sid)

    def add(self, sensor: Sensor) -> None:
        self.sensors[sensor.id] = sensor

    def remove(self, sensor: Sensor) -> None:
        self.sensors.pop(sensor.id, None)

    def close(self) -> None:
        """Retire every ring (readers map the next one)."""
        for sensor in self.sensors.values():
            sensor.close()
        self.sensors.clear()

    def external_uids(self) -> list[int]:
        """The owner uid of every external sensor attached (one per sensor)."""
        return [s.owner.uid for s in self.sensors.values() if s.owner is not None]

    def visible(self, peer: PeerCred, sid: str) -> Sensor:
        """``sid`` if ``peer`` may read it; :class:`NotFound` or :class:`PermissionDenied`."""
        sensor = self.sensors.get(sid)
        if sensor is None:
            raise unknown(sid)
        if not self.policy.allows(peer, sid):
            raise PermissionDenied(f"not allowed to read {sid}", data={"sensor": sid})
        return sensor

    def guard(self, sensor: Sensor, read: Callable[[], _T]) -> _T:
        """``read()`` of ``sensor``'s ring; a ring an external sensor's app broke costs the app
        its sensor (``on_broken``), and the caller an :class:`InvalidFrame`."""
        try:
            return read()
        except InvalidFrame as exc:
            if sensor.owner is None:
                raise
            log.warning("external sensor %s: %s; removing it", sensor.id, exc)
            self.on_broken(sensor)
            raise InvalidFrame(f"{sensor.id}: {exc}", data={"sensor": sensor.id}) from None

    def views(self, peer: PeerCred) -> list[dict[str, Any]]:
        """``sensors/list``: what ``peer`` may read, by id."""
        views = []
        for sid, s in sorted(self.sensors.items()):
            if self.policy.allows(peer, sid):
                with contextlib.suppress(InvalidFrame):
                    views.append(self.guard(s, s.view))
        return views

    def subscribable(self, peer: PeerCred, sids: list[str], futex: bool) -> list[Sensor]:
        """The sensors a ``sensors/subscribe`` names, if ``peer`` may have them so."""
        found = [self.visible(peer, sid) for sid in sids]
        if futex:
            for sensor in found:
                if sensor.futex_address is None:
                    raise InvalidParams(
                        f"{sensor.id}: futex wake-ups are for the publisher's own rings; "
                        'an external sensor wakes its readers with wake="socket"',
                        data={"sensor": sensor.id},
                    )
        return found

    def read(self, peer: PeerCred, sid: object, count: object) -> dict[str, Any]:
        """``sensors/read`` (and the read tool): the latest ``count`` samples of ``sid``."""
        sid, count = read_params(sid, count)
        sensor = self.visible(peer, sid)
        view = self.guard(sensor, sensor.view)
        batch = self.guard(sensor, lambda: sensor.latest(count))
        return {"sensor": view, "samples": samples_json(batch)}

    def stats(self, peer: PeerCred, core: WakeCore) -> dict[str, Any]:
        """``sensors/stats``' sensors and subscribers, as far as ``peer`` may see them."""
        sensors = {}
        for sid, s in sorted(self.sensors.items()):
            if not self.policy.allows(peer, sid):
                continue
            subs = core.by_sensor.get(sid, set())
            try:
                written = self.guard(s, lambda s=s: s.write_index)  # type: ignore[misc]
                rate = self.guard(s, s.measured_rate)
            except InvalidFrame:
                continue  # an external sensor whose ring its app broke: gone now
            sensors[sid] = {
                "written": written,
                "rateHz": round(rate, 1),
                "nominalHz": s.rate_hz,
                "subscribers": len(subs),
                "futexSubscribers": core.futex_waiters.get(sid, 0),
                "subscriptions": core.subscriptions.get(sid, 0),
                "overruns": sum(sub.overruns for sub in subs),
                "coalesced": sum(sub.coalesced for sub in subs),
                "capacity": s.capacity,
            }
        return {"sensors": sensors, "subscribers": core.views_for(peer)}


def samples_json(batch: Batch) -> list[dict[str, Any]]:
    """Samples as the lexicon ``dev.kiki.sensor.defs#sample``: fixed-point integers, and the
    channels that have no value (NaN, infinite) listed under ``missing`` (their value 0)."""
    factor = 10**batch.layout.scale
    out = []
    for sample in batch:
        values, missing = [], []
        for i, v in enumerate(sample.values):
            if isinstance(v, float) and not math.isfinite(v):
                values.append(0)
                missing.append(i)
            else:
                values.append(round(v * factor))
        item: dict[str, Any] = {
            "seq": sample.index,
            "timestampNs": sample.timestamp_ns,
            "values": values,
        }
        if missing:
            item["missing"] = missing
        out.append(item)
    return out
