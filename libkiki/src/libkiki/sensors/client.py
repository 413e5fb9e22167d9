"""Reading sensors, and publishing your own, through the sensor publisher (``sensors.sock``).

::

    async with SensorReader("imu0") as imu:
        print(imu.latest().rows())            # the newest sample
        window = imu.history(0.5)             # the last half second
        async for batch in imu:               # new samples, as they come
            for sample in batch: ...          # or batch.data (memoryview), batch.array() (numpy)

The reader maps the sensor's ring read-only and reads it directly; the socket only carries the
subscription and the wake-ups (``sensors/wake``: ``{sensor: write index}``). If the reader
falls more than a ring behind, ``batch.lost`` says how many samples it missed. If the publisher
restarts, the reader reconnects, maps the new ring (a new generation) and goes on; ``restarts``
counts those.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Self

from libkiki.errors import InvalidFrame, KikiError, NotFound, SchemaError, Unavailable
from libkiki.paths import SENSORS_SOCKET, socket_path
from libkiki.rpc import Connection, Methods, connect_unix
from libkiki.sensors.layout import Layout
from libkiki.sensors.ring import Batch, RingChanged, RingReader
from libkiki.sensors.shm import MappedReader, MappedWriter

WAKE = "sensors/wake"
GONE = "sensors/gone"
_RECONNECT = 10.0


def _path(path: str | os.PathLike[str] | None) -> Path:
    return Path(path) if path is not None else socket_path(SENSORS_SOCKET)


class SensorClient:
    """A JSON-RPC connection to the sensor publisher."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, timeout: float = 10.0):
        self.path = _path(path)
        self.timeout = timeout
        self.wakeups: dict[str, int] = {}
        self.gone: set[str] = set()
        self.wake = asyncio.Event()
        self._stack = contextlib.AsyncExitStack()
        self._conn: Connection | None = None

    async def __aenter__(self) -> Self:
        # Wake-ups are handled as they are read (no task per message): they only note the
        # index and set ``wake``; whoever waits on it reads the ring.
        methods = Methods()

        @methods.inline(WAKE)
        def woken(params: Any) -> None:
            up_to = params.get("upTo") if isinstance(params, dict) else None
            if isinstance(up_to, dict):
                self.wakeups.update(up_to)
                self.wake.set()

        @methods.inline(GONE)
        def gone(params: Any) -> None:
            sensor = params.get("sensor") if isinstance(params, dict) else None
            if isinstance(sensor, str):
                self.gone.add(sensor)
                self.wake.set()

        try:
            self._conn = conn = await self._stack.enter_async_context(
                connect_unix(self.path, methods, request_timeout=self.timeout)
            )
            # The connection ending (the publisher stopping) wakes waiters too.
            watcher = asyncio.get_running_loop().create_task(self._wake_when_closed(conn))
            self._stack.callback(watcher.cancel)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _wake_when_closed(self, conn: Connection) -> None:
        await conn.wait_closed()
        self.wake.set()

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    @property
    def connection(self) -> Connection:
        if self._conn is None:
            raise KikiError("SensorClient is not connected; use `async with SensorClient()`")
        return self._conn

    @property
    def closed(self) -> bool:
        return self._conn is None or self._conn.closed

    async def request(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return await self.connection.request(method, params or {})

    async def list_sensors(self) -> list[dict[str, Any]]:
        result = await self.request("sensors/list")
        sensors: list[dict[str, Any]] = result["sensors"]
        return sensors

    async def view(self, sensor: str) -> dict[str, Any]:
        for view in await self.list_sensors():
            if view["id"] == sensor:
                return view
        raise NotFound(f"no sensor {sensor!r}", data={"sensor": sensor})

    async def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("sensors/stats")
        return result

    async def read(self, sensor: str, count: int = 1) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "sensors/read", {"sensor": sensor, "count": count}
        )
        return result

    async def subscribe(
        self, sensors: Sequence[str], max_wakeups: float = 0
    ) -> list[dict[str, Any]]:
        """Subscribe; ``max_wakeups`` > 0 batches wake-ups to at most that many per second."""
        result = await self.request(
            "sensors/subscribe", {"sensors": list(sensors), "maxWakeupsPerSecond": max_wakeups}
        )
        views: list[dict[str, Any]] = result["sensors"]
        return views

    async def unsubscribe(self, sensors: Sequence[str] | None = None) -> list[str]:
        params = {} if sensors is None else {"sensors": list(sensors)}
        result = await self.request("sensors/unsubscribe", params)
        removed: list[str] = result["unsubscribed"]
        return removed


class RingFollower:
    """What the readers share: the sensor's mapped ring, its latest values, its history, and a
    position in it (:class:`SensorReader` for asyncio, :class:`~libkiki.sensors.blocking.
    BlockingSensorReader` for a thread that blocks)."""

    def __init__(
        self,
        sensor: str,
        path: str | os.PathLike[str] | None,
        max_wakeups: float,
        layout: Layout | None,
        from_start: bool,
    ) -> None:
        self.sensor = sensor
        self.path = _path(path)
        self.max_wakeups = max_wakeups
        self.expected = layout
        self.from_start = from_start
        self.position = 0
        self.lost = 0
        self.restarts = 0
        self.view: dict[str, Any] = {}
        self._mapped: MappedReader | None = None

    def _map(self, view: dict[str, Any], *, futex: bool = False) -> None:
        layout = Layout.from_json(view["layout"])
        if self.expected is not None and self.expected.hash != layout.hash:
            raise SchemaError(
                f"{self.sensor} has layout {layout.name} ({layout.hash:016x}), "
                f"not {self.expected.name} ({self.expected.hash:016x})"
            )
        # The ring must belong to whom the publisher says (itself, or an external sensor's
        # app): a segment squatted under that name by anyone else is refused. An external
        # sensor's ring is read through pread, never mapped: its app could truncate it under
        # a mapping, and touching that would kill this process (SIGBUS).
        owner = view.get("ringUid")
        mapped = MappedReader(
            view["ring"],
            self.expected or layout,
            owner=owner if isinstance(owner, int) else None,
            mapped="owner" not in view,
            futex=futex,
        )
        self._unmap()
        self._mapped = mapped
        self.view = view

    def _unmap(self) -> None:
        if self._mapped is not None:
            self._mapped.close()
            self._mapped = None

    @property
    def layout(self) -> Layout:
        return self.ring_reader().layout

    def ring_reader(self) -> RingReader:
        if self._mapped is None:
            raise KikiError(f"{type(self).__name__} is not open")
        return self._mapped.ring

    def latest(self, count: int = 1) -> Batch:
        return self.ring_reader().latest(count)

    def history(self, seconds: float) -> Batch:
        """The samples of the last ``seconds`` (as far back as the ring goes)."""
        ring = self.ring_reader()
        batch = ring.latest(ring.capacity - 1)
        cutoff = time.monotonic_ns() - int(seconds * 1e9)
        ts = batch.timestamps()
        skip = next((i for i, t in enumerate(ts) if t >= cutoff), len(ts))
        rs = batch.record_size
        return Batch(
            batch.layout, rs, batch.start + skip, batch.count - skip, 0, batch.data[skip * rs :]
        )

    def poll(self) -> Batch:
        """New samples since the last call (possibly none), without waiting."""
        batch = self.ring_reader().read(self.position)
        self.position = batch.end
        self.lost += batch.lost
        return batch

    def _broken(self, exc: InvalidFrame) -> InvalidFrame:
        # An external sensor whose app broke its ring (truncated it): a typed error for the
        # caller, never a crash; the publisher drops that sensor too.
        return InvalidFrame(f"{self.sensor}: {exc}", data={"sensor": self.sensor})


class SensorReader(RingFollower):
    """One sensor: its latest value, a history window, and an async iterator of new samples."""

    def __init__(
        self,
        sensor: str,
        *,
        path: str | os.PathLike[str] | None = None,
        max_wakeups: float = 0,
        layout: Layout | None = None,
        from_start: bool = False,
    ) -> None:
        super().__init__(sensor, path, max_wakeups, layout, from_start)
        self._client: SensorClient | None = None

    async def __aenter__(self) -> Self:
        await self._connect()
        self.position = 0 if self.from_start else self.ring_reader().write_index
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    async def _close(self) -> None:
        self._unmap()
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(KikiError, OSError):
                await client.__aexit__(None, None, None)

    async def _connect(self) -> None:
        client = SensorClient(self.path)
        await client.__aenter__()
        try:
            reply = await client.request(
                "sensors/subscribe",
                {"sensors": [self.sensor], "maxWakeupsPerSecond": self.max_wakeups},
            )
            self._map(reply["sensors"][0])
        except BaseException:
            await client.__aexit__(None, None, None)
            raise
        self._client = client

    @property
    def connected(self) -> bool:
        return self._client is not None and not self._client.closed

    async def next_batch(self) -> Batch:
        """Wait for new samples (or for news of lost ones) and return them."""
        while True:
            client = self._client
            if client is not None:
                client.wake.clear()  # before polling: a wake-up after the poll is not lost
            try:
                batch = self.poll()
            except RingChanged:
                await self._remap()
                continue
            except InvalidFrame as exc:
                raise self._broken(exc) from None
            if batch.count or batch.lost:
                return batch
            if client is not None and self.sensor in client.gone:
                raise NotFound(f"{self.sensor} is gone (its writer left)")
            if client is None or client.closed:
                await self._remap()
                continue
            # Every way the ring can change wakes us: a wake-up, a "gone", the connection
            # ending (the publisher stopping). No timer here: it would cost every wake-up.
            await client.wake.wait()

    async def _remap(self) -> None:
        """The ring was retired or the publisher went away: find the sensor's new ring."""
        deadline = time.monotonic() + _RECONNECT
        while True:
            await self._close()
            try:
                await self._connect()
                break
            except (Unavailable, NotFound, RingChanged) as exc:
                if time.monotonic() > deadline:
                    raise Unavailable(f"{self.sensor}: the publisher did not come back") from exc
                await asyncio.sleep(0.1)
        self.restarts += 1
        self.position = 0

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Batch:
        # A plain method, not an async generator: one layer less on every wake-up.
        return await self.next_batch()

    async def arrays(self) -> AsyncIterator[Any]:
        """New samples as numpy structured arrays (needs numpy)."""
        async for batch in self:
            yield batch.array()


class ExternalSensor:
    """Publish your own sensor: register it, write samples into a ring you own, wake readers.

    ::

        async with ExternalSensor("wheel", layout, rate_hz=100) as wheel:
            await wheel.write((3.2, 0.1))
    """

    def __init__(
        self,
        name: str,
        layout: Layout,
        *,
        capacity: int = 1024,
        rate_hz: float = 0,
        unit: str = "",
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.name = name
        self.layout = layout
        self.capacity = capacity
        self.rate_hz = rate_hz
        self.unit = unit
        self.client = SensorClient(path)
        self.id = ""
        self.view: dict[str, Any] = {}
        self._mapped: MappedWriter | None = None

    async def __aenter__(self) -> Self:
        await self.client.__aenter__()
        try:
            reg = await self.client.request(
                "sensors/register",
                {
                    "name": self.name,
                    "layout": self.layout.to_json(),
                    "capacity": self.capacity,
                    "rateHz": self.rate_hz,
                    "unit": self.unit,
                },
            )
            self.id = reg["sensor"]
            self._mapped = MappedWriter(
                reg["ring"],
                self.layout,
                self.capacity,
                # The read policy's file form: 0640 in the readers' group, or 0600.
                mode=reg.get("ringMode", 0o640),
                gid=reg.get("ringGid", -1),
            )
            self.view = await self.client.request("sensors/attach", {"sensor": self.id})
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    async def _close(self) -> None:
        with contextlib.suppress(KikiError):
            await self.client.__aexit__(None, None, None)
        if self._mapped is not None:
            self._mapped.close()
            self._mapped = None

    def write_nowait(self, values: Sequence[Any], timestamp_ns: int | None = None) -> int:
        """Write one sample into the ring (readers polling see it; nobody is woken)."""
        if self._mapped is None:
            raise KikiError("ExternalSensor is not open")
        ts = time.monotonic_ns() if timestamp_ns is None else timestamp_ns
        return self._mapped.ring.write(ts, values)

    async def publish(self) -> None:
        """Wake the readers (the publisher reads the write index from the ring itself)."""
        await self.client.connection.notify("sensors/written", {"sensor": self.id})

    async def write(self, values: Sequence[Any], timestamp_ns: int | None = None) -> int:
        index = self.write_nowait(values, timestamp_ns)
        await self.publish()
        return index
