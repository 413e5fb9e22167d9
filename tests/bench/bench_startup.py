"""Start-up cost: ``kiki --help``, ``kiki status`` and a service from exec to READY=1.

Run: ``.venv/bin/python tests/bench/bench_startup.py [--runs N] [--quick] [--venv DIR]``. Every
case is a fresh interpreter, measured in the same run as ``python -c pass`` (the venv's
interpreter: the floor every start pays), first pinned to one core (``taskset -c 0``, children
inherit it), then unpinned. Per case, after one uncounted run (which writes the bytecode
cache): the median wall time over N runs, what it costs over the floor's median, and the
median CPU time (user + system) of the process, which the load of a busy machine disturbs less
than the wall clock.

* ``kiki --help``;
* ``kiki status`` against the six services of ``kiki up --no-demo`` (started once per mode in
  a temporary runtime directory, stopped at the end; ``kiki status`` must exit 0);
* each of five services (the D-Bus gateway needs a session bus and is left out) from the exec
  to the ``READY=1`` it sends to a datagram ``NOTIFY_SOCKET`` of the benchmark; its CPU time
  is read at READY (``/proc/PID/task/*/schedstat``), then it is stopped.

The goals (issue 17) are on the wall-clock medians over ``python -c pass``.

``--venv`` runs the interpreter and console scripts of another environment of this tree, such
as a device's set of packages without the development group (whose numpy flatbuffers imports
whenever it is there)::

    UV_PROJECT_ENVIRONMENT=/tmp/kiki-nodev uv sync --no-dev --frozen --all-packages
    .venv/bin/python tests/bench/bench_startup.py --venv /tmp/kiki-nodev
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proc_cpu import cpu_seconds

BIN = Path(sys.executable).parent
READY_SERVICES = ("tool-broker", "updater", "a11y-server", "sensor-publisher", "sync-relay")
ALL_SERVICES = {*READY_SERVICES, "dbus-gateway"}
# Wall-clock budget over ``python -c pass``, seconds.
GOALS = {"kiki --help": 0.150, "kiki status (6 up)": 0.400, "to READY=1": 0.300}

Sample = tuple[float, float]  # (wall seconds, CPU seconds)


def plain_env() -> dict[str, str]:
    # A start as on a device reads cached bytecode: PYTHONDONTWRITEBYTECODE would make every
    # run compile whatever changed since the cache was written.
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def base_env(rundir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in plain_env().items()
        if not k.startswith(("LISTEN_", "NOTIFY_SOCKET", "WATCHDOG_", "KIKI_"))
        and k not in ("RUNTIME_DIRECTORY", "STATE_DIRECTORY", "DBUS_SESSION_BUS_ADDRESS")
    }
    env.update(
        KIKI_RUNTIME_DIR=str(rundir),
        KIKI_STATE_DIR=str(rundir / "state"),
        KIKI_CONFIG_DIR=str(rundir / "etc"),
        KIKI_LOG_LEVEL="WARNING",
        KIKI_SYNC_RELAY_PORT="0",
    )
    return env


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    # Short: AF_UNIX paths are limited to 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="kiki-b", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run(cmd: list[str], env: dict[str, str] | None = None) -> Sample:
    """One run of ``cmd`` to its end: wall time and its CPU time (getrusage of children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        cmd, env=env or plain_env(), capture_output=True, timeout=120, check=False
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.decode()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def to_ready(service: str, env: dict[str, str], notify: socket.socket) -> Sample:
    """Exec ``kiki-<service>`` and wait (bounded) for its READY=1; then stop it."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [str(BIN / f"kiki-{service}")],
        env={**env, "NOTIFY_SOCKET": notify.getsockname()},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = start + 60
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.poll() is not None and proc.stderr else ""
                raise SystemExit(f"kiki-{service} sent no READY=1 (exit {proc.poll()}): {err}")
            notify.settimeout(remaining)
            with contextlib.suppress(TimeoutError):
                if b"READY=1" in notify.recv(4096).split(b"\n"):
                    break
        wall = time.perf_counter() - start
        cpu = cpu_seconds(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()
    return wall, cpu


def ready_samples(service: str, runs: int) -> list[Sample]:
    samples = []
    for _ in range(runs):
        with scratch() as rundir:
            notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                notify.bind(str(rundir / "notify"))
                samples.append(to_ready(service, base_env(rundir), notify))
            finally:
                notify.close()
    return samples


def all_ready(rundir: Path) -> bool:
    try:
        state = json.loads((rundir / "up.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    services = state.get("services", {})
    return set(services) == ALL_SERVICES and all(s["state"] == "ready" for s in services.values())


def status_samples(runs: int) -> list[Sample]:
    """``kiki status`` against ``kiki up --no-demo``; everything it started is stopped."""
    with scratch() as rundir:
        env = base_env(rundir)
        up = subprocess.Popen(
            [
                str(BIN / "kiki"),
                "up",
                "--no-demo",
                "--runtime-dir",
                str(rundir),
                "--state-dir",
                str(rundir / "state"),
                "--relay-port",
                "0",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its services and bus share its process group
        )
        try:
            deadline = time.monotonic() + 120
            while not all_ready(rundir):
                if time.monotonic() > deadline or up.poll() is not None:
                    raise SystemExit(f"kiki up did not get six services ready ({up.poll()})")
                time.sleep(0.1)  # polling a file another process writes
            cmd = [str(BIN / "kiki"), "status", "--runtime-dir", str(rundir)]
            return [run(cmd, env) for _ in range(runs)]
        finally:
            up.terminate()
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait(timeout=30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(up.pid, signal.SIGKILL)  # anything left of the group


def median(samples: list[Sample]) -> Sample:
    return (
        statistics.median(s[0] for s in samples),
        statistics.median(s[1] for s in samples),
    )


def measure(runs: int) -> dict[str, Sample]:
    python = [str(BIN / "python"), "-c", "pass"]
    cases: dict[str, Callable[[], list[Sample]]] = {
        "python -c pass": lambda: [run(python) for _ in range(runs + 1)],
        "kiki --help": lambda: [run([str(BIN / "kiki"), "--help"]) for _ in range(runs + 1)],
        "kiki status (6 up)": lambda: status_samples(runs + 1),
    }
    for service in READY_SERVICES:
        cases[f"{service} to READY=1"] = functools.partial(ready_samples, service, runs + 1)
    # Each case's first run (not counted) writes the bytecode cache and warms the page cache.
    return {name: median(case()[1:]) for name, case in cases.items()}


def goal_of(name: str) -> float | None:
    for key, goal in GOALS.items():
        if name == key or name.endswith(key):
            return goal
    return None


def report(title: str, result: dict[str, Sample]) -> None:
    floor_wall, floor_cpu = result["python -c pass"]
    print(f"\n{title}")
    print(f"  {'case':<30} {'wall ms':>8} {'over':>7} {'CPU ms':>7} {'over':>7}   goal (wall over)")
    for name, (wall, cpu) in result.items():
        over_wall, over_cpu = (wall - floor_wall) * 1e3, (cpu - floor_cpu) * 1e3
        goal = goal_of(name)
        verdict = ""
        if goal is not None:
            met = "met" if over_wall <= goal * 1e3 else "NOT MET"
            verdict = f"<= {goal * 1e3:.0f} ms: {met}"
        print(
            f"  {name:<30} {wall * 1e3:>8.1f} {over_wall:>7.1f} {cpu * 1e3:>7.1f} "
            f"{over_cpu:>7.1f}   {verdict}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs per case (median)")
    parser.add_argument("--quick", action="store_true", help="5 runs per case (a smoke run)")
    parser.add_argument(
        "--venv", type=Path, help="the environment whose kiki and services run (default: this one)"
    )
    args = parser.parse_args()
    runs = 5 if args.quick else args.runs
    global BIN
    if args.venv is not None:
        BIN = args.venv.resolve() / "bin"
    print(
        f"start-up benchmark: {os.cpu_count()} cpus, {sys.version.split()[0]}, {runs} runs, {BIN}"
    )
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})  # children inherit it: taskset -c 0
    pinned = measure(runs)
    os.sched_setaffinity(0, allowed)
    unpinned = measure(runs)
    report("pinned to one core (taskset -c 0)", pinned)
    report("unpinned", unpinned)


if __name__ == "__main__":
    main()
