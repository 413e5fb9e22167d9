"""asyncio layer of the sensor publisher: sources write rings, sensors.sock wakes readers.

Tasks, all owned by one TaskGroup inside ``serve``: one per kernel source (each at its rate),
one per subscriber (its wake-up sender, for batched policies and stalled subscribers), the
broker registration loop. The synthetic IMU is paced by :class:`ImuClock`: an interval timer
whose signal arrives through the loop's wake-up fd while subscribers want frequent wake-up
messages (one callback samples, writes the ring and writes the wake-ups straight to their
transports), a thread of its own otherwise (it writes and wakes futex sleepers itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import grp
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from kiki_sensor_publisher.clock import ImuClock
from kiki_sensor_publisher.config import SensorConfig
from kiki_sensor_publisher.protocol import GONE, WAKE, ReadPolicy, Subscriber, WakeCore, unknown
from kiki_sensor_publisher.rings import Sensor, clean_stale
from kiki_sensor_publisher.sources import Source, SyntheticImu, kernel_sources, sensor_name
from libkiki.constellation import GET_INFO
from libkiki.errors import (
    Conflict,
    InvalidFrame,
    InvalidParams,
    KikiError,
    LimitExceeded,
    PermissionDenied,
)
from libkiki.paths import SENSORS_SOCKET, socket_path
from libkiki.peer import PeerCred
from libkiki.principals import matches as _matches
from libkiki.rpc import Connection, Methods, RequestContext
from libkiki.rpc_service import serve_configured
from libkiki.sensors.layout import Layout
from libkiki.sensors.ring import Batch, segment_size
from libkiki.sensors.shm import MappedReader, segment_owner
from libkiki.service import ServiceContext

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# Buffers of a subscriber's connection: small, so that one that stops reading stalls its own
# sender quickly instead of filling our memory; its wake-ups then coalesce into one dict.
_WRITE_HIGH_WATER = 4096
_SNDBUF = 16384


class Publisher:
    def __init__(self, config: SensorConfig, ctx: ServiceContext) -> None:
        self.config = config
        self.ctx = ctx
        self.sensors: dict[str, Sensor] = {}
        self.core = WakeCore(
            max_subscriptions=config.max_subscriptions,
            max_wakeups_hz=config.max_wakeups_hz,
            max_subscriptions_per_uid=config.max_subscriptions_per_uid or None,
        )
        self.policy = ReadPolicy(config.read_policy)
        self.prefix = config.ring_prefix()
        self.sources: list[Source] = []
        self.imu: ImuClock | None = None
        self._events: dict[int, asyncio.Event] = {}
        self._senders: dict[int, asyncio.Task[None]] = {}
        self._conns: dict[int, Connection] = {}
        # External sensors registered and not attached yet, by id: (connection, uid). Counted
        # with the attached ones against the limits, so that names and quotas are taken at
        # register time, across connections; released when the connection ends.
        self._reserved: dict[str, tuple[Connection, int]] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tg: asyncio.TaskGroup | None = None

    # -- sensors -------------------------------------------------------------------------------

    def _ring_name(self, sensor_id: str) -> str:
        return f"{self.prefix}.{sensor_id}"

    def open_sensors(self) -> None:
        cleaned = clean_stale(self.prefix)
        if cleaned:
            log.info("retired %d stale ring(s) of an earlier run", len(cleaned))
        c = self.config
        if c.imu_hz > 0:
            imu = SyntheticImu(c.imu_hz)
            spec = imu.spec
            sensor = self._create(spec.id, spec.kind, spec.unit, spec.layout, spec.rate_hz)
            self.imu = ImuClock(self, sensor, imu)
        self.sources = kernel_sources(
            c.proc_root,
            c.sys_root,
            cpu_hz=c.cpu_hz,
            memory_hz=c.memory_hz,
            pressure_hz=c.pressure_hz,
            thermal_hz=c.thermal_hz,
            power_hz=c.power_hz,
            iio_hz=c.iio_hz,
        )
        for source in self.sources:
            # One sensor that cannot be set up (its id taken, its layout refused) is logged
            # and skipped; the source's samples for it are dropped (run_source finds no ring).
            try:
                specs = source.sensors()
            except Exception:
                log.exception("source %s skipped: its sensors could not be listed", source.name)
                continue
            for spec in specs:
                if spec.id in self.sensors:
                    log.warning("source %s: sensor %s exists; skipped", source.name, spec.id)
                    continue
                try:
                    self._create(spec.id, spec.kind, spec.unit, spec.layout, spec.rate_hz)
                except (KikiError, OSError) as exc:
                    log.warning("source %s: sensor %s skipped: %s", source.name, spec.id, exc)

    def _create(self, sid: str, kind: str, unit: str, layout: Layout, rate: float) -> Sensor:
        # A ring holds at least ten seconds of a slow sensor, and `capacity` of a fast one.
        cap = min(self.config.capacity, max(16, 1 << math.ceil(math.log2(max(rate * 10, 2)))))
        mode, gid = self._ring_access(sid)
        sensor = Sensor.create(
            sid, kind, unit, layout, rate, self._ring_name(sid), cap, mode=mode, gid=gid
        )
        self.sensors[sid] = sensor
        return sensor

    def _ring_access(self, sid: str) -> tuple[int, int]:
        """(mode, gid) of a sensor's ring: the file-level form of the read policy."""
        for glob, group in self.config.ring_groups.items():
            if fnmatch.fnmatchcase(sid, glob):
                try:
                    return 0o640, grp.getgrnam(group).gr_gid
                except KeyError:
                    raise KikiError(f"ring_groups: no group {group!r}") from None
        return (0o640 if self.policy.open_to_all(sid) else 0o600), -1

    def close_sensors(self) -> None:
        for sensor in self.sensors.values():
            sensor.close()
        self.sensors.clear()

    def publish(self, sensor: Sensor) -> None:
        """Wake ``sensor``'s readers: the futex sleepers, then the message subscribers."""
        self.wake_sleepers(sensor)
        self.publish_messages(sensor)

    def wake_sleepers(self, sensor: Sensor) -> None:
        """Every reader asleep on the ring's wake counter, with one system call (if any sleep
        there). Safe from the IMU thread: it reads the subscriptions, never changes them."""
        if sensor.id in self.core.futex_waiters:
            try:
                sensor.wake_futex()
            except OSError as exc:  # pragma: no cover - only on a kernel without futexes
                log.warning("futex wake-up of %s failed: %s", sensor.id, exc)

    def publish_messages(self, sensor: Sensor) -> None:
        woken = self.core.published(sensor.id, sensor.write_index, sensor.capacity)
        for sub in woken:
            # The fast path: an every-sample subscriber whose connection has nothing queued
            # gets its wake-up sent right here, without a hop through its sender task.
            conn = self._conns.get(sub.id)
            if sub.min_interval == 0 and conn is not None and conn.write_buffer_size == 0:
                message, _ = self.core.take(sub, time.monotonic())
                if message is not None:
                    if conn.try_notify(WAKE, {"upTo": message}):
                        sub.direct += 1
                        continue
                    self.core.restore(sub, message)
            event = self._events.get(sub.id)
            if event is not None:
                event.set()

    async def run_source(self, source: Source) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / source.rate_hz
        deadline = loop.time()
        failing = False
        while True:
            now_ns = time.monotonic_ns()
            try:
                for sid, values in source.sample():
                    sensor = self.sensors.get(sid)
                    if sensor is not None and sensor.writer is not None:
                        sensor.writer.write(now_ns, values)
                        self.publish(sensor)
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

    # -- subscribers ---------------------------------------------------------------------------

    async def on_connect(self, conn: Connection) -> None:
        sub = self.core.connect(conn.peer)
        conn.state["subscriber"] = sub
        # A subscriber that stops reading stalls its own sender soon, and its wake-ups coalesce.
        conn.set_write_limits(_WRITE_HIGH_WATER, sndbuf=_SNDBUF)
        event = self._events[sub.id] = asyncio.Event()
        self._conns[sub.id] = conn
        assert self._tg is not None
        self._senders[sub.id] = self._tg.create_task(self._sender(sub, conn, event))

    async def on_disconnect(self, conn: Connection) -> None:
        sub: Subscriber | None = conn.state.pop("subscriber", None)
        if sub is None:
            return
        task = self._senders.pop(sub.id, None)
        if task is not None:
            task.cancel()
        self._events.pop(sub.id, None)
        self._conns.pop(sub.id, None)
        self.core.disconnect(sub)
        self._retune()
        for sensor in [s for s in self.sensors.values() if s.state.get("conn") is conn]:
            self._drop_external(sensor)
        for sid in [sid for sid, (c, _) in self._reserved.items() if c is conn]:
            del self._reserved[sid]

    async def _sender(self, sub: Subscriber, conn: Connection, event: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await event.wait()
                event.clear()
                while True:
                    message, wait = self.core.take(sub, loop.time())
                    if message is None:
                        if wait <= 0:
                            break
                        await asyncio.sleep(wait)
                        continue
                    await conn.notify(WAKE, {"upTo": message})
        except KikiError:
            pass  # the connection ended; on_disconnect cleans up

    def _sub(self, request: RequestContext) -> Subscriber:
        sub = request.connection.state.get("subscriber")
        assert isinstance(sub, Subscriber)
        return sub

    def _visible(self, peer: PeerCred, sid: str) -> Sensor:
        sensor = self.sensors.get(sid)
        if sensor is None:
            raise unknown(sid)
        if not self.policy.allows(peer, sid):
            raise PermissionDenied(f"not allowed to read {sid}", data={"sensor": sid})
        return sensor

    # -- methods -------------------------------------------------------------------------------

    def methods(self, ctx: ServiceContext) -> Methods:
        m = Methods()

        @m.method(GET_INFO)
        async def get_info(request: RequestContext) -> dict[str, Any]:
            info = ctx.info()
            info["sensors"] = len(self.sensors)
            return info

        m.register("sensors/list", self.list_sensors)
        m.register("sensors/subscribe", self.subscribe)
        m.register("sensors/unsubscribe", self.unsubscribe)
        m.register("sensors/read", self.read)
        m.register("sensors/stats", self.stats)
        m.register("sensors/register", self.register_external)
        m.register("sensors/attach", self.attach_external)
        m.register("sensors/written", self.written)
        return m

    async def list_sensors(self, request: RequestContext) -> dict[str, Any]:
        return {"sensors": self.views(request.peer)}

    def views(self, peer: PeerCred) -> list[dict[str, Any]]:
        views = []
        for sid, s in sorted(self.sensors.items()):
            if self.policy.allows(peer, sid):
                with contextlib.suppress(InvalidFrame):
                    views.append(self._guard(s, s.view))
        return views

    def _guard(self, sensor: Sensor, read: Callable[[], _T]) -> _T:
        """``read()`` of an external sensor's ring; a ring its app broke (truncated, scribbled
        on) costs the app its sensor, and the caller an :class:`InvalidFrame`."""
        try:
            return read()
        except InvalidFrame as exc:
            if sensor.owner is None:
                raise
            log.warning("external sensor %s: %s; removing it", sensor.id, exc)
            self._drop_external(sensor)
            raise InvalidFrame(f"{sensor.id}: {exc}", data={"sensor": sensor.id}) from None

    async def subscribe(
        self,
        request: RequestContext,
        sensors: list[str],
        maxWakeupsPerSecond: float = 0,
        wake: str = "socket",
    ) -> dict[str, Any]:
        if not isinstance(sensors, list) or not all(isinstance(s, str) for s in sensors):
            raise InvalidParams("sensors is a list of sensor ids")
        if not isinstance(maxWakeupsPerSecond, int | float) or maxWakeupsPerSecond < 0:
            raise InvalidParams("maxWakeupsPerSecond is a number >= 0 (0: every sample)")
        if wake not in ("socket", "futex"):
            raise InvalidParams('wake is "socket" (wake-up messages) or "futex"')
        found = [self._visible(request.peer, sid) for sid in sensors]
        if wake == "futex":
            for sensor in found:
                if sensor.futex_address is None:
                    raise InvalidParams(
                        f"{sensor.id}: futex wake-ups are for the publisher's own rings; "
                        'an external sensor wakes its readers with wake="socket"',
                        data={"sensor": sensor.id},
                    )
        sub = self._sub(request)
        self.core.subscribe(sub, sensors, maxWakeupsPerSecond or None, futex=wake == "futex")
        self._retune()
        return {"sensors": [self._guard(s, s.view) for s in found]}

    def _retune(self) -> None:
        if self.imu is not None:
            self.imu.retune()

    async def unsubscribe(
        self, request: RequestContext, sensors: list[str] | None = None
    ) -> dict[str, Any]:
        removed = self.core.unsubscribe(self._sub(request), sensors)
        self._retune()
        return {"unsubscribed": removed}

    async def read(self, request: RequestContext, sensor: str, count: int = 1) -> dict[str, Any]:
        return self.read_for(request.peer, sensor, count)

    def read_for(self, peer: PeerCred, sid: str, count: int) -> dict[str, Any]:
        if not isinstance(sid, str):
            raise InvalidParams("sensor is a sensor id")
        if not isinstance(count, int) or not 1 <= count <= 1024:
            raise InvalidParams("count must be an integer in 1..1024")
        sensor = self._visible(peer, sid)
        view = self._guard(sensor, sensor.view)
        batch = self._guard(sensor, lambda: sensor.latest(count))
        return {"sensor": view, "samples": samples_json(batch)}

    async def stats(self, request: RequestContext) -> dict[str, Any]:
        sensors = {}
        for sid, s in sorted(self.sensors.items()):
            if not self.policy.allows(request.peer, sid):
                continue
            subs = self.core.by_sensor.get(sid, set())
            try:
                written = self._guard(s, lambda s=s: s.write_index)  # type: ignore[misc]
                rate = self._guard(s, s.measured_rate)
            except InvalidFrame:
                continue  # an external sensor whose ring its app broke: gone now
            sensors[sid] = {
                "written": written,
                "rateHz": round(rate, 1),
                "nominalHz": s.rate_hz,
                "subscribers": len(subs),
                "futexSubscribers": self.core.futex_waiters.get(sid, 0),
                "subscriptions": self.core.subscriptions.get(sid, 0),
                "overruns": sum(sub.overruns for sub in subs),
                "coalesced": sum(sub.coalesced for sub in subs),
                "capacity": s.capacity,
            }
        visible = request.peer.uid == 0
        subscribers = [
            sub.view()
            for sub in self.core.subscribers.values()
            if sub.sensors and (visible or sub.peer.uid == request.peer.uid)
        ]
        result: dict[str, Any] = {
            "sensors": sensors,
            "subscribers": subscribers,
            "connections": len(self._senders),
        }
        if self.imu is not None and self.imu.sensor.id in sensors:
            # How the synthetic IMU is paced now: "signal" (on the loop) or "thread".
            result["imuClock"] = {"mode": self.imu.mode, "tickHz": self.imu.tick_hz}
        return result

    # -- external sensors ----------------------------------------------------------------------

    async def register_external(
        self,
        request: RequestContext,
        name: str,
        layout: dict[str, Any],
        capacity: int = 1024,
        rateHz: float = 0,
        unit: str = "",
    ) -> dict[str, Any]:
        peer = request.peer
        if not any(_matches(p, peer) or peer.uid == 0 for p in self.config.external_writers):
            raise PermissionDenied("not allowed to register sensors")
        if not isinstance(name, str) or sensor_name(name) != name:
            raise InvalidParams("name: lowercase letters, digits, '-' and '_' (at most 48)")
        if not isinstance(capacity, int) or capacity < 16 or capacity & (capacity - 1):
            raise InvalidParams("capacity must be a power of two >= 16")
        if capacity > self.config.capacity * 16:
            raise LimitExceeded(f"capacity at most {self.config.capacity * 16}")
        if not isinstance(unit, str) or len(unit) > 32:
            raise InvalidParams("unit is a short string")
        if not isinstance(rateHz, int | float) or rateHz < 0:
            raise InvalidParams("rateHz is a number >= 0")
        parsed = Layout.from_json(layout)
        owner = sensor_name(peer.app_id or f"uid{peer.uid}")
        sid = f"ext-{owner}-{name}"
        if sid in self.sensors or sid in self._reserved:
            raise Conflict(
                f"sensor {sid} is already registered (by another connection or this one)",
                data={"sensor": sid},
            )
        # Attached and reserved (registered, not attached yet) ones alike, whatever connection.
        uids = [s.owner.uid for s in self.sensors.values() if s.owner is not None]
        uids += [uid for _, uid in self._reserved.values()]
        if len(uids) >= self.config.max_external:
            raise LimitExceeded(f"at most {self.config.max_external} external sensors")
        if uids.count(peer.uid) >= self.config.max_external_per_uid:
            raise LimitExceeded(f"at most {self.config.max_external_per_uid} sensors per user")
        ring = f"{self.prefix}-ext.{peer.uid}.{sid}"
        # The file-level form of the read policy, as for the publisher's own rings: the app
        # sets it on its ring (the group if it is a member of it), attach checks it.
        mode, gid = self._ring_access(sid)
        if gid == -1:
            gid = os.getegid()  # the unit's group, as the publisher's own rings have
        registered = request.connection.state.setdefault("registered", {})
        self._reserved[sid] = (request.connection, peer.uid)
        registered[sid] = (ring, parsed, capacity, float(rateHz), unit, mode)
        return {
            "sensor": sid,
            "ring": ring,
            "capacity": capacity,
            "layout": parsed.to_json(),
            "ringMode": mode,
            "ringGid": gid,
        }

    async def attach_external(self, request: RequestContext, sensor: str) -> dict[str, Any]:
        registered = request.connection.state.get("registered", {})
        if sensor not in registered:
            raise unknown(sensor)
        ring, layout, capacity, rate, unit, mode = registered[sensor]
        try:
            st = segment_owner(ring)
        except FileNotFoundError:
            raise InvalidParams(f"create the ring {ring} before attaching it") from None
        if st.st_uid != request.peer.uid:
            raise PermissionDenied(f"{ring} does not belong to you")
        if st.st_mode & 0o777 & ~mode:
            raise PermissionDenied(
                f"{ring} has mode {st.st_mode & 0o777:04o}; this sensor's read policy allows "
                f"at most {mode:04o}"
            )
        if st.st_size != segment_size(layout, capacity):
            raise InvalidParams(f"{ring} is not a ring of {capacity} records of its layout")
        # Never mapped: its app may truncate it at any time, and a mapping touched past the
        # end would be SIGBUS for this process. Read through pread (an InvalidFrame then).
        mapped = MappedReader(ring, layout, owner=request.peer.uid, mapped=False)
        if mapped.ring.capacity != capacity:
            mapped.close()
            raise InvalidParams(f"{ring} has capacity {mapped.ring.capacity}, not {capacity}")
        ext = Sensor.external(sensor, unit, layout, rate, mapped, request.peer)
        ext.state["conn"] = request.connection
        del registered[sensor]
        self._reserved.pop(sensor, None)
        self.sensors[sensor] = ext
        log.info("external sensor %s attached by %s", sensor, request.peer.describe())
        return ext.view()

    async def written(self, request: RequestContext, sensor: str) -> None:
        found = self.sensors.get(sensor)
        if found is None or found.state.get("conn") is not request.connection:
            raise unknown(sensor)
        # The ring's own write index counts, not the app's word.
        self._guard(found, lambda: self.publish(found))

    def _drop_external(self, sensor: Sensor) -> None:
        self.sensors.pop(sensor.id, None)
        for sub in self.core.drop_sensor(sensor.id):
            conn = self._conns.get(sub.id)
            if conn is not None and self._tg is not None:
                self._tg.create_task(_quiet_notify(conn, GONE, {"sensor": sensor.id}))
        sensor.close()
        log.info("external sensor %s removed", sensor.id)


async def _quiet_notify(conn: Connection, method: str, params: dict[str, Any]) -> None:
    with contextlib.suppress(KikiError):
        async with asyncio.timeout(2.0):
            await conn.notify(method, params)


def samples_json(batch: Batch) -> list[dict[str, Any]]:
    """Samples as the lexicon ``dev.kiki.sensor.defs#sample``: fixed-point integers."""
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


@contextlib.asynccontextmanager
async def serve(ctx: ServiceContext) -> AsyncIterator[None]:
    from kiki_sensor_publisher.tools import broker_loop

    config: SensorConfig = ctx.config
    listener = ctx.listeners.unix("sensors", socket_path(SENSORS_SOCKET))
    pub = Publisher(config, ctx)
    pub._loop = asyncio.get_running_loop()
    try:
        pub.open_sensors()
        async with asyncio.TaskGroup() as tg:
            pub._tg = tg
            for source in pub.sources:
                pub.tasks.append(tg.create_task(pub.run_source(source), name=source.name))
            pub.tasks.append(tg.create_task(broker_loop(pub), name="broker"))
            if pub.imu is not None:
                pub.imu.start(asyncio.get_running_loop())
            try:
                async with serve_configured(
                    ctx,
                    listener,
                    pub.methods(ctx),
                    on_connect=pub.on_connect,
                    on_disconnect=pub.on_disconnect,
                ):
                    how = "activated" if ctx.listeners.activated else "bound"
                    ctx.status = f"serving {SENSORS_SOCKET} ({how}), {len(pub.sensors)} sensors"
                    yield
            finally:
                for task in pub.tasks:
                    task.cancel()
                if pub.imu is not None:
                    pub.imu.stop()
    finally:
        pub._loop = None
        pub.close_sensors()
        log.info("rings retired")
