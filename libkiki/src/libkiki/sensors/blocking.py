"""A sensor read by a thread that blocks, without an event loop: woken through a futex.

::

    with BlockingSensorReader("imu0") as imu:
        for batch in imu:                     # blocks until new samples are in the ring
            for sample in batch: ...

The reader subscribes over ``sensors.sock`` like :class:`~libkiki.sensors.client.SensorReader`
(the publisher checks who it is by ``SO_PEERCRED``), but with ``wake: "futex"``: instead of
wake-up messages, it sleeps on the ring's wake counter (:mod:`libkiki.sensors.futex`) and the
publisher wakes every sleeper of a sensor with one system call. That is the cheapest wake-up
there is for the reader (no event loop turn, no message to parse) and for the publisher (one
call, however many readers), which is what a control loop or a recorder wants.

While nothing is written it looks up every ``check_interval`` seconds (the connection still
open, the ring not retired): a publisher that was killed cannot wake anyone. When the ring
changes (a restart) it subscribes again and maps the new one, as the asyncio reader does.
Only the publisher's own rings have futex wake-ups; an external sensor is read with
:class:`~libkiki.sensors.client.SensorReader`.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

from libkiki.errors import InvalidFrame, NotFound, Timeout, Unavailable
from libkiki.framing import DEFAULT_MAX_LINE, LineDecoder
from libkiki.rpc.messages import ResponseReceived
from libkiki.rpc.protocol import RpcCore
from libkiki.sensors.client import _RECONNECT, RingFollower
from libkiki.sensors.layout import Layout
from libkiki.sensors.ring import Batch, RingChanged


class _Channel:
    """A blocking JSON-RPC connection to the publisher: requests in turn, notifications
    ignored (a futex subscriber is sent none). The sans-I/O core does the protocol."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(os.fspath(path))
        except OSError as exc:
            self.sock.close()
            raise Unavailable(
                f"cannot connect to {os.fspath(path)}: {exc.strerror or exc}"
            ) from exc
        self.core = RpcCore()
        self.lines = LineDecoder(DEFAULT_MAX_LINE)
        self.open = True

    def request(self, method: str, params: dict[str, Any]) -> Any:
        rid, data = self.core.request(method, params)
        try:
            self.sock.sendall(data)
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise Unavailable("the sensor publisher closed the connection")
                for line in self.lines.feed(chunk):
                    for event in self.core.receive(line):
                        if isinstance(event, ResponseReceived) and event.id == rid:
                            if event.error is not None:
                                raise event.error
                            return event.result
        except TimeoutError:
            self.core.abandon(rid)
            raise Timeout(f"{method}: no answer from the sensor publisher") from None
        except OSError as exc:
            self.open = False
            raise Unavailable(f"{method}: {exc.strerror or exc}") from exc

    def alive(self) -> bool:
        """Whether the publisher still holds the connection (reads what waits, without
        blocking)."""
        if not self.open:
            return False
        try:
            while True:
                chunk = self.sock.recv(65536, socket.MSG_DONTWAIT)
                if not chunk:
                    self.open = False
                    return False
                for line in self.lines.feed(chunk):
                    self.core.receive(line)  # nothing is owed to us here
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            self.open = False
            return False

    def close(self) -> None:
        self.open = False
        self.sock.close()


class BlockingSensorReader(RingFollower):
    """One sensor, read by a blocking thread: latest value, history, and an iterator of new
    samples that sleeps on the ring's futex in between."""

    def __init__(
        self,
        sensor: str,
        *,
        path: str | os.PathLike[str] | None = None,
        max_wakeups: float = 0,
        layout: Layout | None = None,
        from_start: bool = False,
        timeout: float = 10.0,
        check_interval: float = 1.0,
    ) -> None:
        super().__init__(sensor, path, max_wakeups, layout, from_start)
        self.timeout = timeout
        self.check_interval = check_interval
        self._channel: _Channel | None = None

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> Self:
        self._connect()
        self.position = 0 if self.from_start else self.ring_reader().write_index
        return self

    def close(self) -> None:
        self._unmap()
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def _connect(self) -> None:
        channel = _Channel(self.path, self.timeout)
        try:
            reply = channel.request(
                "sensors/subscribe",
                {
                    "sensors": [self.sensor],
                    "maxWakeupsPerSecond": self.max_wakeups,
                    "wake": "futex",
                },
            )
            self._map(reply["sensors"][0], futex=True)
        except BaseException:
            channel.close()
            raise
        self._channel = channel

    @property
    def connected(self) -> bool:
        return self._channel is not None and self._channel.open

    def next_batch(self, timeout: float | None = None) -> Batch:
        """Block until new samples (or news of lost ones) and return them; after ``timeout``
        seconds without any, an empty batch."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            ring = self.ring_reader()
            count = ring.wake_count  # before the ring: a write after this look moves it
            try:
                batch = self.poll()
            except RingChanged:
                self._remap()
                continue
            except InvalidFrame as exc:
                raise self._broken(exc) from None
            if batch.count or batch.lost:
                return batch
            wait = self.check_interval
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return batch
                wait = min(wait, left)
            word = self._mapped.word if self._mapped is not None else None
            assert word is not None  # _connect maps the ring with its futex word
            if word.wait(count, wait):
                continue
            # A quiet while: a killed publisher wakes nobody, so look at the connection.
            if self._channel is None or not self._channel.alive():
                self._remap()

    def _remap(self) -> None:
        """The ring was retired or the publisher went away: find the sensor's new ring."""
        deadline = time.monotonic() + _RECONNECT
        while True:
            self.close()
            try:
                self._connect()
                break
            except (Unavailable, NotFound, RingChanged) as exc:
                if time.monotonic() > deadline:
                    raise Unavailable(f"{self.sensor}: the publisher did not come back") from exc
                time.sleep(0.1)
        self.restarts += 1
        self.position = 0

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next_batch()

    def arrays(self) -> Iterator[Any]:
        """New samples as numpy structured arrays (needs numpy)."""
        for batch in self:
            yield batch.array()
