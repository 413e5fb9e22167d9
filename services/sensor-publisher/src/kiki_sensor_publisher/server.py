"""asyncio layer of the sensor publisher: the notify socket, its connections and ``serve``.

Everything here moves bytes and futures; the decisions are elsewhere: subscriptions and wake-ups
(:mod:`.protocol`), what a peer may see and read (:mod:`.catalog`), external sensors
(:mod:`.external`, deciding through :mod:`.admission`), the built-in sensors and their sources
(:mod:`.builtin`), the IMU's clock (:mod:`.clock`), the broker tools (:mod:`.tools`).

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
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from kiki_sensor_publisher.admission import ExternalAdmission, RingRules
from kiki_sensor_publisher.builtin import open_builtin, run_source
from kiki_sensor_publisher.catalog import Catalog
from kiki_sensor_publisher.clock import ImuClock
from kiki_sensor_publisher.config import SensorConfig
from kiki_sensor_publisher.core import (
    GONE,
    WAKE,
    ReadPolicy,
    Subscriber,
    WakeCore,
    subscribe_params,
)
from kiki_sensor_publisher.external import ExternalSensors
from kiki_sensor_publisher.rings import Sensor
from libkiki.constellation import GET_INFO
from libkiki.errors import KikiError
from libkiki.paths import SENSORS_SOCKET
from libkiki.rpc import Connection, Methods, RequestContext
from libkiki.rpc_service import serve_configured
from libkiki.service import ServiceContext

log = logging.getLogger(__name__)

# Buffers of a subscriber's connection: small, so that one that stops reading stalls its own
# sender quickly instead of filling our memory; its wake-ups then coalesce into one dict.
_WRITE_HIGH_WATER = 4096
_SNDBUF = 16384


class Publisher:
    """The notify socket's side of the publisher: subscriber connections and their wake-ups.

    ``tg`` (``serve``'s, while it runs) owns the per-connection sender tasks and the
    ``sensors/gone`` notifications."""

    def __init__(self, config: SensorConfig) -> None:
        self.tg: asyncio.TaskGroup | None = None
        self.core = WakeCore(
            max_subscriptions=config.max_subscriptions,
            max_wakeups_hz=config.max_wakeups_hz,
            max_subscriptions_per_uid=config.max_subscriptions_per_uid or None,
        )
        policy = ReadPolicy(config.read_policy)
        self.catalog = Catalog(policy)
        self.catalog.on_broken = self.drop_sensor
        self.prefix = config.ring_prefix()
        self.rules = RingRules(config, policy)
        self.external = ExternalSensors(
            ExternalAdmission(config, self.rules, self.prefix),
            self.catalog,
            self.publish,
            self.drop_sensor,
        )
        self.imu: ImuClock | None = None
        self._events: dict[int, asyncio.Event] = {}
        self._senders: dict[int, asyncio.Task[None]] = {}
        self._conns: dict[int, Connection] = {}

    # -- wake-ups ------------------------------------------------------------------------------

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

    def drop_sensor(self, sensor: Sensor) -> None:
        """An external sensor goes (its app left, or broke its ring): its subscribers are told."""
        self.catalog.remove(sensor)
        for sub in self.core.drop_sensor(sensor.id):
            conn = self._conns.get(sub.id)
            if conn is not None and self.tg is not None:
                self.tg.create_task(_quiet_notify(conn, GONE, {"sensor": sensor.id}))
        sensor.close()
        log.info("external sensor %s removed", sensor.id)

    def _retune(self) -> None:
        if self.imu is not None:
            self.imu.retune()

    # -- connections ---------------------------------------------------------------------------

    async def on_connect(self, conn: Connection) -> None:
        sub = self.core.connect(conn.peer)
        conn.state["subscriber"] = sub
        # A subscriber that stops reading stalls its own sender soon, and its wake-ups coalesce.
        conn.set_write_limits(_WRITE_HIGH_WATER, sndbuf=_SNDBUF)
        event = self._events[sub.id] = asyncio.Event()
        self._conns[sub.id] = conn
        assert self.tg is not None
        self._senders[sub.id] = self.tg.create_task(self._sender(sub, conn, event))

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
        self.external.session_ended(conn)

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

    # -- methods -------------------------------------------------------------------------------

    def methods(self, ctx: ServiceContext) -> Methods:
        m = Methods()

        @m.method(GET_INFO)
        async def get_info(request: RequestContext) -> dict[str, Any]:
            info = ctx.info()
            info["sensors"] = len(self.catalog)
            return info

        m.register("sensors/list", self.list_sensors)
        m.register("sensors/subscribe", self.subscribe)
        m.register("sensors/unsubscribe", self.unsubscribe)
        m.register("sensors/read", self.read)
        m.register("sensors/stats", self.stats)
        self.external.add_methods(m)
        return m

    async def list_sensors(self, request: RequestContext) -> dict[str, Any]:
        return {"sensors": self.catalog.views(request.peer)}

    async def subscribe(
        self,
        request: RequestContext,
        sensors: list[str],
        maxWakeupsPerSecond: float = 0,
        wake: str = "socket",
    ) -> dict[str, Any]:
        sids, max_wakeups, futex = subscribe_params(sensors, maxWakeupsPerSecond, wake)
        found = self.catalog.subscribable(request.peer, sids, futex)
        self.core.subscribe(_subscriber(request), sids, max_wakeups, futex=futex)
        self._retune()
        return {"sensors": [self.catalog.guard(s, s.view) for s in found]}

    async def unsubscribe(
        self, request: RequestContext, sensors: list[str] | None = None
    ) -> dict[str, Any]:
        removed = self.core.unsubscribe(_subscriber(request), sensors)
        self._retune()
        return {"unsubscribed": removed}

    async def read(self, request: RequestContext, sensor: str, count: int = 1) -> dict[str, Any]:
        return self.catalog.read(request.peer, sensor, count)

    async def stats(self, request: RequestContext) -> dict[str, Any]:
        result = self.catalog.stats(request.peer, self.core)
        result["connections"] = len(self._senders)
        if self.imu is not None and self.imu.sensor.id in result["sensors"]:
            # How the synthetic IMU is paced now: "signal" (on the loop) or "thread".
            result["imuClock"] = {"mode": self.imu.mode, "tickHz": self.imu.tick_hz}
        return result


def _subscriber(request: RequestContext) -> Subscriber:
    sub = request.connection.state.get("subscriber")
    assert isinstance(sub, Subscriber)
    return sub


async def _quiet_notify(conn: Connection, method: str, params: dict[str, Any]) -> None:
    with contextlib.suppress(KikiError):
        async with asyncio.timeout(2.0):
            await conn.notify(method, params)


@contextlib.asynccontextmanager
async def serve(ctx: ServiceContext) -> AsyncIterator[None]:
    from kiki_sensor_publisher.tools import broker_loop

    config: SensorConfig = ctx.config
    listener = ctx.listen()
    pub = Publisher(config)
    try:
        builtin = open_builtin(config, pub.catalog, pub.rules, pub.prefix)
        async with asyncio.TaskGroup() as tg:
            pub.tg = tg
            tasks = [
                tg.create_task(run_source(source, pub.catalog, pub.publish), name=source.name)
                for source in builtin.sources
            ]
            tasks.append(tg.create_task(broker_loop(config, pub.catalog), name="broker"))
            if builtin.imu is not None:
                pub.imu = ImuClock(pub, *builtin.imu)
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
                    ctx.status = f"serving {SENSORS_SOCKET} ({how}), {len(pub.catalog)} sensors"
                    yield
            finally:
                for task in tasks:
                    task.cancel()
                if pub.imu is not None:
                    pub.imu.stop()
    finally:
        pub.tg = None
        pub.catalog.close()
        log.info("rings retired")
