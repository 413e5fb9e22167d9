"""``kiki sensors``: list the device's sensors, watch one live, show the publisher's counters."""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from typing import Any

import orjson

from kiki_cli.common import fail, service_group
from libkiki.errors import KikiError
from libkiki.paths import SENSORS_SOCKET
from libkiki.sensors.blocking import BlockingSensorReader
from libkiki.sensors.client import SensorClient, SensorReader
from libkiki.sensors.ring import Batch


def register(sub: Any) -> None:
    _, cmds = service_group(
        sub,
        "sensors",
        help="list, watch and inspect sensors",
        description="Talk to the sensor publisher on sensors.sock; watch maps the rings.",
        peer="the publisher",
        socket_name=SENSORS_SOCKET,
    )

    ls = cmds.add_parser("list", help="the sensors you may read")
    ls.add_argument("--json", action="store_true", help="the publisher's descriptions as JSON")
    ls.set_defaults(func=run_list)

    watch = cmds.add_parser("watch", help="print a sensor's values as they come")
    watch.add_argument("name")
    watch.add_argument("--count", type=int, default=0, help="stop after N samples (0: never)")
    watch.add_argument(
        "--rate",
        type=float,
        default=10.0,
        help="lines per second for people (default 10); --json prints every sample",
    )
    watch.add_argument("--json", action="store_true", help="one JSON object per sample")
    watch.add_argument(
        "--futex",
        action="store_true",
        help="sleep on the ring's wake counter (BlockingSensorReader) instead of waiting for "
        "wake-up messages; the publisher's own sensors only",
    )
    watch.set_defaults(func=run_watch)

    stats = cmds.add_parser("stats", help="rates, readers and overruns")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=run_stats)


def _fail(exc: KikiError) -> int:
    return fail("sensors", exc)


def _dump(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode()


def run_list(args: argparse.Namespace) -> int:
    async def go() -> list[dict[str, Any]]:
        async with SensorClient(args.socket) as client:
            return await client.list_sensors()

    try:
        sensors = asyncio.run(go())
    except KikiError as exc:
        return _fail(exc)
    if args.json:
        print(_dump(sensors))
        return 0
    width = max((len(s["id"]) for s in sensors), default=6)
    print(f"{'SENSOR':<{width}}  {'KIND':<11}  {'RATE':>7}  {'LAYOUT':<14}  FIELDS")
    for s in sensors:
        fields = ", ".join(
            f"{f['name']}[{f['unit']}]" if f["unit"] else f["name"] for f in s["layout"]["fields"]
        )
        rate = f"{s.get('rateHz', 0)} Hz"
        print(
            f"{s['id']:<{width}}  {s['kind']:<11}  {rate:>7}  {s['layout']['name']:<14}  {fields}"
        )
    return 0


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def run_watch(args: argparse.Namespace) -> int:
    try:
        if args.futex:
            return _watch_blocking(args)
        return asyncio.run(_watch(args))
    except KikiError as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        return 0


class _Watch:
    """What watch prints, whichever reader feeds it: every sample as JSON, or a line at a time
    with the rate over the last second."""

    def __init__(self, args: argparse.Namespace, names: tuple[str, ...]) -> None:
        self.args = args
        self.names = names
        self.seen = 0
        self.window: list[tuple[int, int]] = []  # (monotonic ns, samples) over the last second

    def start(self, latest: Batch, lost: int) -> None:
        if not self.args.json and latest.count:
            _print_line(self.args.name, self.names, latest, 0.0, lost)

    def batch(self, batch: Batch, lost: int) -> bool:
        """Print a batch; True once --count samples are out."""
        args = self.args
        if args.json:
            for sample in batch:
                line = {
                    "sensor": args.name,
                    "index": sample.index,
                    "timestampNs": sample.timestamp_ns,
                    "values": dict(zip(self.names, sample.values, strict=True)),
                }
                if batch.lost:
                    line["lost"] = batch.lost
                print(orjson.dumps(line).decode(), flush=True)
                self.seen += 1
                if args.count and self.seen >= args.count:
                    return True
            return False
        now = time.monotonic_ns()
        self.window.append((now, batch.count))
        self.window = window = [(t, c) for t, c in self.window if now - t < 1_000_000_000]
        span = (now - window[0][0]) / 1e9 if len(window) > 1 else 0.0
        rate = sum(c for _, c in window[1:]) / span if span > 0 else _batch_rate(batch)
        _print_line(args.name, self.names, batch, rate, lost)
        self.seen += batch.count
        return bool(args.count and self.seen >= args.count)


def _wakeups(args: argparse.Namespace) -> float:
    # People get at most --rate lines a second; --json gets every sample.
    return 0.0 if args.json else max(args.rate, 0.1)


async def _watch(args: argparse.Namespace) -> int:
    async with SensorReader(args.name, path=args.socket, max_wakeups=_wakeups(args)) as reader:
        out = _Watch(args, reader.layout.names)
        out.start(reader.latest(), reader.lost)
        async for batch in reader:
            if out.batch(batch, reader.lost):
                break
    return 0


def _watch_blocking(args: argparse.Namespace) -> int:
    with BlockingSensorReader(args.name, path=args.socket, max_wakeups=_wakeups(args)) as reader:
        out = _Watch(args, reader.layout.names)
        out.start(reader.latest(), reader.lost)
        for batch in reader:
            if out.batch(batch, reader.lost):
                break
    return 0


def _batch_rate(batch: Batch) -> float:
    """Samples per second from one batch's own timestamps (before a second batch has come)."""
    stamps = [sample.timestamp_ns for sample in batch]
    if len(stamps) < 2 or stamps[-1] <= stamps[0]:
        return 0.0
    return (len(stamps) - 1) / ((stamps[-1] - stamps[0]) / 1e9)


def _print_line(name: str, names: tuple[str, ...], batch: Batch, rate: float, lost: int) -> None:
    values = batch.rows()[-1]
    shown = "  ".join(f"{n}={_format(v)}" for n, v in zip(names, values, strict=True))
    hz = f"{rate:.1f} Hz" if rate > 0 else "- Hz"  # not measured yet
    print(f"{name}  #{batch.end - 1}  {shown}  {hz}  lost {lost}", flush=True)


def run_stats(args: argparse.Namespace) -> int:
    async def go() -> dict[str, Any]:
        async with SensorClient(args.socket) as client:
            return await client.stats()

    try:
        stats = asyncio.run(go())
    except KikiError as exc:
        return _fail(exc)
    if args.json:
        print(_dump(stats))
        return 0
    sensors = stats["sensors"]
    width = max((len(s) for s in sensors), default=6)
    print(
        f"{'SENSOR':<{width}}  {'RATE':>9}  {'NOMINAL':>8}  {'WRITTEN':>9}  {'READERS':>7}  "
        f"{'FUTEX':>5}  {'OVERRUNS':>8}  {'COALESCED':>9}"
    )
    for sid, s in sensors.items():
        print(
            f"{sid:<{width}}  {s['rateHz']:>9.1f}  {s['nominalHz']:>8g}  {s['written']:>9}  "
            f"{s['subscribers']:>7}  {s.get('futexSubscribers', 0):>5}  {s['overruns']:>8}  "
            f"{s['coalesced']:>9}"
        )
    clock = stats.get("imuClock")
    if clock:
        print(f"\nIMU sampled by: {clock['mode']}, {clock['tickHz']:g} ticks/s")
    subs = stats["subscribers"]
    if subs:
        print()
        print("READER                WAKE-UPS  COALESCED  OVERRUNS  SENSORS")
        for sub in subs:
            who = f"uid={sub['uid']} pid={sub['pid']}"
            futex = set(sub.get("futex", ()))
            names = ", ".join(f"{n} (futex)" if n in futex else n for n in sub["sensors"])
            print(
                f"{who:<20}  {sub['wakeups']:>8}  {sub['coalesced']:>9}  {sub['overruns']:>8}  "
                f"{names}"
            )
    return 0
