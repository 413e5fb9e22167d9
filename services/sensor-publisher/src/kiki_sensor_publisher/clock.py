"""The synthetic IMU's clock.

:class:`SampleSchedule` is the sans-I/O part: which samples are due at a clock reading, and
what each is stamped. :class:`ImuClock` runs it, on the loop's interval timer or in a thread of
its own, whichever the subscribers need; both ways take their samples from the one schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
import threading
import time
from typing import TYPE_CHECKING, Protocol

from libkiki import signals

if TYPE_CHECKING:
    from kiki_sensor_publisher.core import WakeCore
    from kiki_sensor_publisher.rings import Sensor
    from kiki_sensor_publisher.sources import SyntheticImu


class Waker(Protocol):
    """Who the clock tells about its writes (the server's publisher)."""

    @property
    def core(self) -> WakeCore: ...

    def publish(self, sensor: Sensor) -> None:
        """Wake every reader of ``sensor`` (from the loop)."""

    def wake_sleepers(self, sensor: Sensor) -> None:
        """Wake ``sensor``'s futex sleepers (safe from another thread)."""

    def publish_messages(self, sensor: Sensor) -> None:
        """Wake ``sensor``'s message subscribers (from the loop)."""


class SampleSchedule:
    """Sample *n* of a fixed-rate series is due every ``period_ns``; stamps never go back.

    The caller reads the clock and passes the reading; nothing here reads a clock. A sample
    taken within half a period of its due time is stamped with the reading it was taken at; one
    taken later keeps its due time (coarse ticks write several at once: the series stays evenly
    spaced). Either way a stamp is later than the one before it: a sample whose reading came
    late (the writer was descheduled between its look at the clock and its write) cannot
    back-date the next one behind it. After a stall of more than ``max_behind_ns`` the schedule
    skips ahead instead of writing the backlog in a burst; indices stay consecutive.
    """

    def __init__(self, period_ns: int, start_ns: int, *, max_behind_ns: int = 100_000_000):
        if period_ns < 2:
            raise ValueError("period_ns must be at least 2")
        self.period_ns = period_ns
        self.max_behind_ns = max_behind_ns
        self.next_ns = start_ns  # when the next sample is due
        self.index = 0  # the next sample's index
        self.last_stamp: int | None = None

    def due(self, now_ns: int) -> int:
        """How many samples are due at ``now_ns``; :meth:`take` each of them."""
        if now_ns - self.next_ns > self.max_behind_ns:
            self.next_ns = now_ns
        # Half a period of slack: a timer and the schedule drift apart by nanoseconds.
        ahead = now_ns + self.period_ns // 2 - self.next_ns
        return 0 if ahead < 0 else ahead // self.period_ns + 1

    def take(self, now_ns: int) -> tuple[int, int]:
        """The next sample's ``(index, stamp)``, taken at the clock reading ``now_ns``."""
        due = self.next_ns
        stamp = due if due < now_ns - self.period_ns // 2 else now_ns
        if self.last_stamp is not None and stamp <= self.last_stamp:
            stamp = self.last_stamp + 1
        index = self.index
        self.index += 1
        self.next_ns += self.period_ns
        self.last_stamp = stamp
        return index, stamp

    def wake_ns(self, tick_ns: int) -> int:
        """When a writer that writes every ``tick_ns`` should look next: when the last sample
        of its tick is due (with a tick of one period, exactly on each sample's time)."""
        return self.next_ns + tick_ns - self.period_ns


class ImuClock:
    """Samples the synthetic IMU on time, in one of two ways, whichever its subscribers need.

    *On the event loop* (``mode == "signal"``) while some subscriber wants wake-up messages more
    often than every 10 ms: an interval timer's SIGALRM reaches the loop (through
    :mod:`libkiki.signals`: a burst of them is one callback, and never crowds out a stop), and
    one callback samples, writes the ring and writes the wake-ups straight to the subscribers'
    transports. (asyncio's own timers wake at most once a millisecond: epoll's timeout is in ms.)

    *In a thread of its own* (``mode == "thread"``) otherwise -- futex readers, batched message
    subscribers, nobody: it sleeps to each tick, writes, and wakes the futex sleepers itself
    (one system call); messages for batched subscribers go through the loop
    (``call_soon_threadsafe``, at most once per tick). A thread woken by its timer costs less
    than half of what the loop's signal path does.

    Either way the tick is once per sample while a subscriber wants every sample; otherwise as
    often as the most eager subscriber wants wake-ups (at most every 10 ms), writing the
    samples due since the last tick. Switching stops one way (the thread is joined, or the
    timer disarmed and a timer callback already queued made a no-op) before the other starts:
    the ring keeps a single writer, and the schedule a single user.
    """

    IDLE_TICK_NS = 10_000_000

    def __init__(self, pub: Waker, sensor: Sensor, imu: SyntheticImu) -> None:
        self.pub = pub
        self.sensor = sensor
        self.imu = imu
        self.period_ns = int(1e9 / imu.rate_hz)
        self.schedule = SampleSchedule(self.period_ns, time.monotonic_ns())
        self.tick_ns = 0
        self.rung = 0
        self.mode = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._socket_due = False  # a socket wake-up pass is queued on the loop

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.schedule = SampleSchedule(self.period_ns, time.monotonic_ns())
        self.retune()

    def retune(self) -> None:
        """Pick the tick and the way for the current subscribers (called when they change)."""
        if self._loop is None:
            return
        core, sid = self.pub.core, self.sensor.id
        fastest = core.fastest.get(sid)
        want = self.IDLE_TICK_NS if fastest is None else int(fastest * 1e9)
        want = max(self.period_ns, min(want, self.IDLE_TICK_NS))
        # Subscribers that want wake-up messages more often than every 10 ms have the loop
        # sample for them; batched ones are told from the thread through the loop, which then
        # wakes only at their pace (measured: 1.9 % of a core for 4 readers at 50 wake-ups/s
        # at 1 kHz, 3.1 % with the loop's timer at 100 Hz doing the sampling).
        messages = core.socket_fastest.get(sid)
        frequent = messages is not None and messages * 1e9 < self.IDLE_TICK_NS
        mode = "signal" if frequent else "thread"
        if mode != self.mode:
            self._halt()
            self.mode, self.tick_ns = mode, want
            if mode == "signal":
                signals.add_signal_handler(self._loop, signal.SIGALRM, self.tick)
                signal.setitimer(signal.ITIMER_REAL, want / 1e9, want / 1e9)
                self.tick()  # the first sample now, not a tick later
            else:
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="imu-clock", daemon=True)
                self._thread.start()
        elif want != self.tick_ns:
            self.tick_ns = want  # the thread reads it on its next tick
            if mode == "signal":
                signal.setitimer(signal.ITIMER_REAL, want / 1e9, want / 1e9)

    @property
    def tick_hz(self) -> float:
        return round(1e9 / self.tick_ns, 1) if self.tick_ns else 0.0

    def _halt(self) -> None:
        if self.mode == "signal":
            signal.setitimer(signal.ITIMER_REAL, 0)
            if self._loop is not None:
                signals.remove_signal_handler(self._loop, signal.SIGALRM)
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.mode = ""

    def stop(self) -> None:
        self._halt()
        self._loop = None

    def _write_due(self, now: int) -> bool:
        writer = self.sensor.writer
        if writer is None:
            return False
        schedule, values = self.schedule, self.imu.values
        count = schedule.due(now)
        for _ in range(count):
            # The reading the sample is taken at, just before its write.
            index, stamp = schedule.take(time.monotonic_ns())
            writer.write(stamp, values(index))
        return count > 0

    def _due(self, now: int) -> bool:
        """Whether the most eager subscriber wants to hear about the writes now."""
        interval = self.pub.core.fastest.get(self.sensor.id)
        if interval is None or now - self.rung < interval * 1e9:
            return False
        self.rung = now
        return True

    def tick(self) -> None:
        """The signal way: sample, write, wake everyone from the loop."""
        if self.mode != "signal":
            return  # queued before a switch to the thread, which now owns the ring
        now = time.monotonic_ns()
        if self._write_due(now) and self._due(now):
            self.pub.publish(self.sensor)

    def _run(self) -> None:
        """The thread way."""
        _set_timer_slack(1000)  # sleep to the tick, not up to 50 µs past it
        core, sensor, loop = self.pub.core, self.sensor, self._loop
        assert loop is not None
        while not self._stop.is_set() and sensor.writer is not None:
            now = time.monotonic_ns()
            wake = self.schedule.wake_ns(self.tick_ns)
            if now < wake:
                # A plain sleep (clock_nanosleep): the cheapest timed wake-up there is; a stop
                # waits at most one tick (10 ms).
                time.sleep((wake - now) / 1e9)
                continue
            if not (self._write_due(now) and self._due(now)):
                continue
            self.pub.wake_sleepers(sensor)
            if sensor.id in core.socket_fastest and not self._socket_due:
                self._socket_due = True
                try:
                    loop.call_soon_threadsafe(self._publish_messages)
                except RuntimeError:  # the loop is closing: nobody to tell
                    return

    def _publish_messages(self) -> None:
        self._socket_due = False
        self.pub.publish_messages(self.sensor)


def _set_timer_slack(ns: int) -> None:
    """PR_SET_TIMERSLACK for the calling thread (Linux; best effort)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(29, ctypes.c_ulong(ns), 0, 0, 0)
