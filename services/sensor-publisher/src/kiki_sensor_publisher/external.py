"""External sensors on the notify socket: an app registers one (``sensors/register``), creates
its ring, attaches it (``sensors/attach``) and says when it wrote (``sensors/written``); the
sensor lasts as long as the app's connection.

The decisions (who may, which name, which limits, whether the ring is fit) are
:class:`~kiki_sensor_publisher.admission.ExternalAdmission`'s; this module looks at the ring's
file and opens it. An external ring is never mapped: its app may truncate it at any time, and
a mapping touched past the end of its file is SIGBUS for this process. It is read through
``pread`` (a broken ring is then an :class:`InvalidFrame`, and costs the app its sensor).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kiki_sensor_publisher.admission import ExternalAdmission, RingFile
from kiki_sensor_publisher.catalog import Catalog
from kiki_sensor_publisher.core import unknown
from kiki_sensor_publisher.rings import Sensor
from libkiki.errors import InvalidParams
from libkiki.rpc import Connection, Methods, RequestContext
from libkiki.sensors.shm import MappedReader, segment_owner

log = logging.getLogger(__name__)


class ExternalSensors:
    """The ``sensors/register``, ``attach`` and ``written`` methods, and the end of a session.

    ``publish`` wakes a sensor's readers; ``drop`` removes a sensor and tells its subscribers.
    """

    def __init__(
        self,
        admission: ExternalAdmission,
        catalog: Catalog,
        publish: Callable[[Sensor], None],
        drop: Callable[[Sensor], None],
    ) -> None:
        self.admission = admission
        self.catalog = catalog
        self.publish = publish
        self.drop = drop

    def add_methods(self, methods: Methods) -> None:
        methods.register("sensors/register", self.register)
        methods.register("sensors/attach", self.attach)
        methods.register("sensors/written", self.written)

    async def register(
        self,
        request: RequestContext,
        name: str,
        layout: dict[str, Any],
        capacity: int = 1024,
        rateHz: float = 0,
        unit: str = "",
    ) -> dict[str, Any]:
        reg = self.admission.register(
            request.connection,
            request.peer,
            name,
            layout,
            capacity,
            rateHz,
            unit,
            taken=self.catalog,
            attached_uids=self.catalog.external_uids(),
        )
        return reg.answer()

    async def attach(self, request: RequestContext, sensor: str) -> dict[str, Any]:
        reg = self.admission.held_by(request.connection, sensor)
        try:
            found = RingFile.of(segment_owner(reg.ring))
        except FileNotFoundError:
            raise InvalidParams(f"create the ring {reg.ring} before attaching it") from None
        self.admission.check_ring(reg, request.peer, found)
        mapped = MappedReader(reg.ring, reg.layout, owner=request.peer.uid, mapped=False)
        if mapped.ring.capacity != reg.capacity:
            mapped.close()
            raise InvalidParams(
                f"{reg.ring} has capacity {mapped.ring.capacity}, not {reg.capacity}"
            )
        ext = Sensor.external(sensor, reg.unit, reg.layout, reg.rate_hz, mapped, request.peer)
        ext.state["conn"] = request.connection
        self.admission.attached(sensor)
        self.catalog.add(ext)
        log.info("external sensor %s attached by %s", sensor, request.peer.describe())
        return ext.view()

    async def written(self, request: RequestContext, sensor: str) -> None:
        found = self.catalog.get(sensor)
        if found is None or found.state.get("conn") is not request.connection:
            raise unknown(sensor)
        # The ring's own write index counts, not the app's word.
        self.catalog.guard(found, lambda: self.publish(found))

    def session_ended(self, conn: Connection) -> None:
        """``conn`` is gone: its sensors, and the names it held, with it."""
        for sensor in [s for s in self.catalog if s.state.get("conn") is conn]:
            self.drop(sensor)
        self.admission.session_ended(conn)
