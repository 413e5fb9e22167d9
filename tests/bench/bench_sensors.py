"""Sensor publisher benchmark: rings and wake-ups beside a Unix datagram baseline, in one run.

    .venv/bin/python tests/bench/bench_sensors.py [--seconds S] [--quick]

Cases (each beside the same samples sent as Unix datagrams, one per sample):

  write      cost of writing one IMU sample (24 bytes of fields) into a ring in /dev/shm,
             one at a time and in batches; the baseline: one sendto() per sample
  max        sustained samples/s with one reader process following along, and how many the
             reader got; the baseline: datagrams that a receiver process drains
  wake-up    sample timestamp -> a blocked reader has it, at 1 kHz and 10 kHz with 1 and 4
             readers, p50/p99 over every sample, for both readers: SensorReader (asyncio,
             awaiting a wake-up message on sensors.sock) and BlockingSensorReader (a thread
             asleep on the ring's futex); the baseline: a sender thread at the same rate,
             readers blocked in recv(). Both writers stamp a sample when they take it, or
             with its scheduled time when they are late by more than half a period, so that
             a writer's lateness counts in both
  cpu        the publisher's CPU (utime+stime) at 1 kHz with 4 readers subscribed to every
             sample (asyncio readers, then futex readers); the baseline: the datagram sender at
             1 kHz to 4 receivers; for context, the wake floors: an asyncio loop that a 1 kHz
             (and a 100 Hz) timer wakes to do nothing, and wake_floor.c -- a C program paced by
             clock_nanosleep at 1 kHz that futex-wakes 4 C readers (compiled with cc, if any)

Latency cases run unpinned and pinned to one core (``taskset -c 0``: publisher and readers
share it), ``--repeats`` times each; the table gives the medians of the runs' p50 and p99.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import mmap
import os
import platform
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
sys.path.insert(0, str(REPO / "libkiki" / "src"))

from proc_cpu import cpu_seconds  # noqa: E402  (tests/bench, the script's own directory)

from libkiki.sensors.layout import IMU6  # noqa: E402
from libkiki.sensors.ring import RingWriter, segment_size  # noqa: E402

SAMPLE = (0.1, 0.2, 9.81, 0.01, 0.02, 0.03)
DGRAM = struct.Struct("<Q6f")

RING_READER = """
import asyncio, sys, time, orjson
from libkiki.sensors.client import SensorReader
async def main():
    sock, n, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    async with SensorReader("imu0", path=sock, max_wakeups=rate) as r:
        print("ready", flush=True)
        sys.stdin.readline()  # "go": every reader has started
        r.poll()  # what was written while we waited is not a wake-up latency
        lat, samples, lost = [], 0, 0
        async for b in r:
            now = time.monotonic_ns()
            lat.extend(now - t for t in b.timestamps())
            samples += b.count
            lost += b.lost
            if len(lat) >= n:
                break
    print(orjson.dumps({"lat": lat, "samples": samples, "lost": lost}).decode(), flush=True)
asyncio.run(main())
"""

BLOCKING_READER = """
import sys, time, orjson
from libkiki.sensors.blocking import BlockingSensorReader
sock, n, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with BlockingSensorReader("imu0", path=sock, max_wakeups=rate) as r:
    print("ready", flush=True)
    sys.stdin.readline()  # "go": every reader has started
    r.poll()  # what was written while we waited is not a wake-up latency
    lat, samples, lost = [], 0, 0
    for b in r:
        now = time.monotonic_ns()
        lat.extend(now - t for t in b.timestamps())
        samples += b.count
        lost += b.lost
        if len(lat) >= n:
            break
print(orjson.dumps({"lat": lat, "samples": samples, "lost": lost}).decode(), flush=True)
"""

DGRAM_READER = """
import socket, struct, sys, time, orjson
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
n = int(sys.argv[2])
print("ready", flush=True)
lat = []
while len(lat) < n:
    data = s.recv(64)
    lat.append(time.monotonic_ns() - struct.unpack_from("<Q", data)[0])
print(orjson.dumps({"lat": lat, "samples": n, "lost": 0}).decode(), flush=True)
"""

RING_FOLLOWER = """
import sys, time, mmap, os, orjson
from libkiki.sensors.layout import IMU6
from libkiki.sensors.shm import MappedReader
m = MappedReader(sys.argv[1], IMU6)
r = m.ring
print("ready", flush=True)
pos = r.write_index
got = lost = 0
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    b = r.read(pos)
    pos = b.end
    got += b.count
    lost += b.lost
print(orjson.dumps({"got": got, "lost": lost}).decode(), flush=True)
"""

DGRAM_DRAIN = """
import socket, sys, time, orjson
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.settimeout(1.0)
print("ready", flush=True)
got = 0
try:
    while True:
        s.recv(64)
        got += 1
except TimeoutError:
    pass
print(orjson.dumps({"got": got}).decode(), flush=True)
"""


# Every child runs in a process group of its own and is listed here until it is reaped, so that
# a run that fails anywhere (a timeout, an exception, SIGTERM or Ctrl-C) leaves nothing behind.
_CHILDREN: list[subprocess.Popen[Any]] = []


def popen(cmd: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    proc: subprocess.Popen[Any] = subprocess.Popen(cmd, start_new_session=True, **kwargs)
    _CHILDREN.append(proc)
    return proc


def reap(proc: subprocess.Popen[Any]) -> None:
    """Kill ``proc``'s group and wait for it (a no-op for one that has been waited for)."""
    if proc.returncode is None:  # not reaped yet, so its pid (and group id) is still its own
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with contextlib.suppress(ValueError):
        _CHILDREN.remove(proc)


def reap_all() -> None:
    while _CHILDREN:
        reap(_CHILDREN[-1])


def spawn(code: str, *args: str, pin: bool = False) -> subprocess.Popen[str]:
    cmd = [str(BIN / "python"), "-c", code, *args]
    if pin:
        cmd = ["taskset", "-c", "0", *cmd]
    proc = popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        reap(proc)
        raise SystemExit(f"helper did not start: {line!r}")
    return proc


def go(procs: list[subprocess.Popen[str]]) -> None:
    """Start the readers' measurements together, once all of them are up: a reader measured
    while the next ones start their interpreters would time their start-up, not the ring."""
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()


def result(proc: subprocess.Popen[str], timeout: float = 60) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    data: dict[str, Any] = orjson.loads(out.strip().splitlines()[-1])
    return data


def pct(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000.0


# -- write cost and throughput ----------------------------------------------------------------


def shm_ring(name: str, capacity: int) -> tuple[mmap.mmap, RingWriter]:
    size = segment_size(IMU6, capacity)
    fd = os.open(f"/dev/shm/{name}", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o640)
    os.ftruncate(fd, size)
    m = mmap.mmap(fd, size)
    os.close(fd)
    return m, RingWriter(m, IMU6, capacity)


def bench_write(n: int) -> dict[str, float]:
    name = f"kiki-bench-{os.getpid()}"
    m, w = shm_ring(name, 4096)
    try:
        ts = time.monotonic_ns()
        t0 = time.perf_counter()
        for _ in range(n):
            w.write(ts, SAMPLE)
        single = (time.perf_counter() - t0) / n
        rows = [SAMPLE] * 256
        stamps = [ts] * 256
        t0 = time.perf_counter()
        for _ in range(n // 256):
            w.write_many(stamps, rows)
        batched = (time.perf_counter() - t0) / (n // 256 * 256)
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        b.setblocking(False)
        payload = DGRAM.pack(ts, *SAMPLE)
        t0 = time.perf_counter()
        sent = 0
        for _ in range(n // 100):
            for _ in range(100):
                a.send(payload)
            sent += 100
            try:
                while True:
                    b.recv(64)
            except BlockingIOError:
                pass
        dgram = (time.perf_counter() - t0) / sent
        a.close()
        b.close()
        w.release()
    finally:
        m.close()
        os.unlink(f"/dev/shm/{name}")
    return {"single": single, "batched": batched, "dgram": dgram}


def bench_max(seconds: float) -> dict[str, float]:
    name = f"kiki-bench-max-{os.getpid()}"
    m, w = shm_ring(name, 1 << 16)
    try:
        follower = spawn(RING_FOLLOWER, name, str(seconds + 0.5))
        rows = [SAMPLE] * 256
        written = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while time.perf_counter() < deadline:
            stamps = [time.monotonic_ns()] * 256
            w.write_many(stamps, rows)
            written += 256
        elapsed = time.perf_counter() - t0
        follow = result(follower)
        w.release()
    finally:
        m.close()
        os.unlink(f"/dev/shm/{name}")
    tmp = Path(tempfile.mkdtemp(prefix="kiki-bench-"))
    try:
        path = str(tmp / "d")
        drain = spawn(DGRAM_DRAIN, path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.connect(path)
        payload = DGRAM.pack(time.monotonic_ns(), *SAMPLE)
        sent = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while time.perf_counter() < deadline:
            for _ in range(100):
                s.send(payload)  # blocks when the receiver's queue is full: sustained rate
            sent += 100
        d_elapsed = time.perf_counter() - t0
        s.close()
        drained = result(drain)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "ring_written": written / elapsed,
        "ring_read": follow["got"] / elapsed,
        "ring_lost": follow["lost"],
        "dgram": drained["got"] / d_elapsed,
        "dgram_sent": sent / d_elapsed,
    }


# -- the publisher ----------------------------------------------------------------------------


def _timer_slack(ns: int) -> None:
    """PR_SET_TIMERSLACK for this thread, as the publisher's IMU thread sets it."""
    ctypes.CDLL(None).prctl(29, ctypes.c_ulong(ns), 0, 0, 0)


class Publisher:
    def __init__(self, rate: int, pin: bool) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="kiki-bench-"))
        self.socket = self.dir / "sensors.sock"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KIKI_", "LISTEN_"))}
        env.update(
            KIKI_RUNTIME_DIR=str(self.dir),
            KIKI_CONFIG_DIR=str(self.dir / "etc"),
            KIKI_SENSOR_PUBLISHER_IMU_HZ=str(rate),
            KIKI_SENSOR_PUBLISHER_BROKER_TOOLS="false",
            KIKI_LOG_LEVEL="WARNING",
            **{
                f"KIKI_SENSOR_PUBLISHER_{k}_HZ": "0"
                for k in ("CPU", "MEMORY", "PRESSURE", "THERMAL", "POWER", "IIO")
            },
        )
        cmd = [str(BIN / "kiki-sensor-publisher")]
        if pin:
            cmd = ["taskset", "-c", "0", *cmd]
        self.proc = popen(cmd, env=env, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.kill()
                raise SystemExit("the publisher did not start")
            time.sleep(0.05)
        time.sleep(0.3)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        try:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                raise SystemExit("the publisher was still running 20 s after SIGTERM") from None
            if self.proc.returncode != 0:
                raise SystemExit(f"the publisher exited {self.proc.returncode} on SIGTERM")
        finally:
            self.kill()

    def kill(self) -> None:
        reap(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def ring_latency(
    rate: int, readers: int, count: int, pin: bool, code: str = RING_READER
) -> dict[str, Any]:
    pub = Publisher(rate, pin)
    procs: list[subprocess.Popen[str]] = []
    try:
        for _ in range(readers):
            procs.append(spawn(code, str(pub.socket), str(count), "0", pin=pin))
        go(procs)
        outs = [result(p) for p in procs]
    finally:
        for p in procs:
            reap(p)
        pub.stop()
    lat = [x for o in outs for x in o["lat"][count // 10 :]]  # the first tenth warms up
    return {"p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "lost": sum(o["lost"] for o in outs)}


def dgram_sender(paths: list[str], rate: int, stop: threading.Event) -> None:
    _timer_slack(1000)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    period = int(1e9 / rate)
    next_ns = time.monotonic_ns()
    while not stop.is_set():
        now = time.monotonic_ns()
        if now < next_ns:
            time.sleep((next_ns - now) / 1e9)
            continue
        # Stamped as the publisher stamps its IMU: now, or its scheduled time when later than
        # half a period (so a late sender's lateness counts, as the publisher's does).
        stamp = next_ns if now - next_ns > period // 2 else time.monotonic_ns()
        payload = DGRAM.pack(stamp, *SAMPLE)
        for p in paths:
            with contextlib.suppress(OSError):
                s.sendto(payload, p)
        next_ns += period


def dgram_latency(rate: int, readers: int, count: int, pin: bool) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="kiki-bench-"))
    paths = [str(tmp / f"r{i}") for i in range(readers)]
    procs: list[subprocess.Popen[str]] = []
    stop = threading.Event()
    sender = threading.Thread(target=dgram_sender, args=(paths, rate, stop))
    try:
        for p in paths:
            procs.append(spawn(DGRAM_READER, p, str(count), pin=pin))
        if pin:
            os.sched_setaffinity(0, {0})
        sender.start()
        outs = [result(p) for p in procs]
    finally:
        stop.set()
        if sender.is_alive():
            sender.join()
        for proc in procs:
            reap(proc)
        if pin:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        shutil.rmtree(tmp, ignore_errors=True)
    lat = [x for o in outs for x in o["lat"][count // 10 :]]
    return {"p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "lost": 0}


def _cpu_with_readers(
    seconds: float, readers: int, wakeups: float, code: str = RING_READER
) -> float:
    pub = Publisher(1000, False)
    procs: list[subprocess.Popen[str]] = []
    try:
        count = str(int(seconds * 1000 * 4))
        for _ in range(readers):
            procs.append(spawn(code, str(pub.socket), count, str(wakeups)))
        go(procs)
        time.sleep(0.5)
        c0, t0 = pub.cpu_seconds(), time.monotonic()
        time.sleep(seconds)
        c1, t1 = pub.cpu_seconds(), time.monotonic()
    finally:
        for p in procs:
            reap(p)
        pub.stop()
    return 100 * (c1 - c0) / (t1 - t0)


TICKER = """
import asyncio, signal, sys

async def main():
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGALRM, lambda: None)
    period = 1 / float(sys.argv[1])
    signal.setitimer(signal.ITIMER_REAL, period, period)
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def wake_floor(seconds: float, hz: int) -> float:
    """CPU of a process whose event loop a timer wakes ``hz`` times a second, doing nothing."""
    proc = popen([sys.executable, "-c", TICKER, str(hz)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(0.5)
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(seconds)
        c1, t1 = cpu_seconds(proc.pid), time.monotonic()
    finally:
        reap(proc)
    return 100 * (c1 - c0) / (t1 - t0)


def c_wake_floor(seconds: float) -> float | None:
    """CPU of wake_floor.c: paced at 1 kHz, futex-waking 4 readers (None without a compiler)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        print("# wake_floor.c not measured: no C compiler", file=sys.stderr)
        return None
    tmp = Path(tempfile.mkdtemp(prefix="kiki-bench-"))
    try:
        exe = tmp / "wake_floor"
        subprocess.run(
            [cc, "-O2", "-o", str(exe), str(Path(__file__).with_name("wake_floor.c"))], check=True
        )
        proc = popen([str(exe), "4", str(seconds)], stdout=subprocess.PIPE, text=True)
        try:
            out, _ = proc.communicate(timeout=seconds + 30)
        finally:
            reap(proc)  # and the readers it forked, in its group
        if proc.returncode != 0:
            raise SystemExit(f"wake_floor exited {proc.returncode}")
        return float(out.split()[0])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publisher_cpu(seconds: float) -> dict[str, float | None]:
    every = _cpu_with_readers(seconds, 4, 0)
    futex = _cpu_with_readers(seconds, 4, 0, BLOCKING_READER)
    batched = _cpu_with_readers(seconds, 4, 50)
    idle = _cpu_with_readers(seconds, 0, 0)
    # The baseline: this process's sender thread, at 1 kHz to 4 datagram readers.
    tmp = Path(tempfile.mkdtemp(prefix="kiki-bench-"))
    paths = [str(tmp / f"r{i}") for i in range(4)]
    readers: list[subprocess.Popen[str]] = []
    stop = threading.Event()
    sender = threading.Thread(target=dgram_sender, args=(paths, 1000, stop))
    try:
        for p in paths:
            readers.append(spawn(DGRAM_READER, p, str(10**9)))
        r0, k0 = time.clock_gettime(time.CLOCK_PROCESS_CPUTIME_ID), time.monotonic()
        sender.start()
        time.sleep(seconds)
        stop.set()
        sender.join()
        r1, k1 = time.clock_gettime(time.CLOCK_PROCESS_CPUTIME_ID), time.monotonic()
    finally:
        stop.set()
        if sender.is_alive():
            sender.join()
        for r in readers:
            reap(r)
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "publisher": every,
        "publisher_futex": futex,
        "floor_c": c_wake_floor(seconds),
        "publisher_batched": batched,
        "publisher_no_readers": idle,
        "floor_1000": wake_floor(seconds, 1000),
        "floor_100": wake_floor(seconds, 100),
        "dgram": 100 * (r1 - r0) / (k1 - k0),
    }


def median_of(repeats: int, case: Any, *args: Any) -> dict[str, Any]:
    """Run a latency case ``repeats`` times; the medians of its p50s and p99s, losses summed."""
    runs = [case(*args) for _ in range(repeats)]
    return {
        "p50": statistics.median(r["p50"] for r in runs),
        "p99": statistics.median(r["p99"] for r in runs),
        "lost": sum(r["lost"] for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per latency/CPU case")
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per latency case (medians reported)"
    )
    args = parser.parse_args()
    n = 20_000 if args.quick else 200_000
    print(
        f"# bench_sensors {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"Linux {platform.release()}"
    )
    w = bench_write(n)
    print("\n| write (per sample) | ring | datagram | ratio |\n|---|---|---|---|")
    print(
        f"| one at a time | {w['single'] * 1e9:.0f} ns | {w['dgram'] * 1e9:.0f} ns | "
        f"{w['dgram'] / w['single']:.1f}x faster |"
    )
    print(
        f"| batches of 256 | {w['batched'] * 1e9:.0f} ns | {w['dgram'] * 1e9:.0f} ns | "
        f"{w['dgram'] / w['batched']:.1f}x faster |"
    )
    mx = bench_max(args.seconds)
    print("\n| sustained throughput | ring | datagram | ratio |\n|---|---|---|---|")
    print(
        f"| samples/s written | {mx['ring_written']:,.0f} | {mx['dgram_sent']:,.0f} | "
        f"{mx['ring_written'] / mx['dgram_sent']:.1f}x |"
    )
    print(
        f"| samples/s a reader got (lost {mx['ring_lost']:,}) | {mx['ring_read']:,.0f} | "
        f"{mx['dgram']:,.0f} | {mx['ring_read'] / mx['dgram']:.1f}x |"
    )
    print(
        "\n| wake-up latency | pinning | asyncio reader, socket: p50 / p99 (us) | "
        "blocking reader, futex: p50 / p99 (us) | datagram p50 / p99 (us) | ratio p50 "
        "(asyncio, futex) |\n|---|---|---|---|---|---|"
    )
    for pin in (False, True):
        for rate in (1000, 10_000):
            for readers in (1, 4):
                count = int(rate * args.seconds) if rate == 1000 else int(rate * args.seconds / 4)
                count = max(200, count // (10 if args.quick else 1))
                r = median_of(args.repeats, ring_latency, rate, readers, count, pin)
                f = median_of(
                    args.repeats, ring_latency, rate, readers, count, pin, BLOCKING_READER
                )
                d = median_of(args.repeats, dgram_latency, rate, readers, count, pin)
                lost = r["lost"] + f["lost"]
                print(
                    f"| {rate // 1000} kHz, {readers} reader{'s' if readers > 1 else ''}"
                    f"{f', lost {lost}' if lost else ''} | "
                    f"{'taskset -c 0' if pin else 'unpinned'} | {r['p50']:.0f} / {r['p99']:.0f} | "
                    f"{f['p50']:.0f} / {f['p99']:.0f} | {d['p50']:.0f} / {d['p99']:.0f} | "
                    f"{r['p50'] / d['p50']:.1f}x, {f['p50'] / d['p50']:.1f}x |",
                    flush=True,
                )
    cpu = publisher_cpu(args.seconds)
    dgram = max(cpu["dgram"] or 0.0, 0.01)
    print("\n| CPU at 1 kHz | ring publisher | datagram sender | ratio |\n|---|---|---|---|")
    for label, key in (
        ("4 asyncio readers, every sample (socket)", "publisher"),
        ("4 blocking readers, every sample (futex)", "publisher_futex"),
    ):
        value = cpu[key] or 0.0
        print(f"| {label} | {value:.1f} % | {dgram:.1f} % | {value / dgram:.1f}x |")
    print(f"| 4 asyncio readers, at most 50 wake-ups/s | {cpu['publisher_batched']:.1f} % | | |")
    print(f"| no reader | {cpu['publisher_no_readers']:.1f} % | | |")
    print(f"| wake floor: a loop woken 1000/s, no work | {cpu['floor_1000']:.1f} % | | |")
    if cpu["floor_c"] is not None:
        print(
            f"| wake floor: wake_floor.c, 1 kHz, futex-waking 4 readers | "
            f"{cpu['floor_c']:.1f} % | | |"
        )
    print(f"| wake floor: a loop woken 100/s, no work | {cpu['floor_100']:.1f} % | | |")


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # so that the finally below reaps the children


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminated)
    try:
        main()
    finally:
        reap_all()
