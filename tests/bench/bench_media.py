"""Media benchmark: a command through the broker and the D-Bus gateway, beside the same D-Bus
call made directly and beside spawning playerctl; and a player flooding PropertiesChanged.

    .venv/bin/python tests/bench/bench_media.py [--calls N] [--spawns N] [--seconds S] [--quick]

One run, one private bus (kikitest.dbus_fixtures: the real broker and gateway) and one mpv with
mpv-mpris playing a generated tone:

  gateway   ToolClient.call("dev.kiki.media.play", {"player": "mpv"}): client -> broker ->
            gateway -> mpv and back (one connection, calls one after another)
  broker    the broker's own dev.kiki.service.getInfo on the same connection: the floor of any
            call through the broker, without a provider or a bus
  hops      dev.kiki.media.nowPlaying through the broker and the gateway: the two JSON-RPC hops
            of the gateway path, without its D-Bus call (the gateway answers from its state)
  least     the least gateway (least_gateway.py, a floor row): the same chain with the gateway
            replaced by the least Python process that can do the job at all: registered on the
            real broker as a provider (with play's lexicon, under dev.kiki.bench.leastPlay),
            it makes the same dbus-fast Play to mpv's unique name and answers when the reply
            comes (sender checked, a deadline); no player tracking, no task, no event loop
            library (a selectors loop). Its ratio to direct is the floor of any Python gateway
            here: over 3x, the goal is floor-bound (the run says so)
  least_aio the same least gateway on asyncio (an asyncio Protocol and a dbus-fast message
            handler): the floor of a gateway on asyncio, as Kiki's services are
  direct    the same MPRIS Play, sent to mpv with dbus-fast from this process
  after_hop the same direct Play, each one made right after an (untimed) nowPlaying through the
            broker and the gateway: the D-Bus call as the gateway path makes it, with the bus
            daemon and mpv idle since the last call and this process just woken (a diagnostic
            row: the goal is against ``direct``, calls one after another)
  playerctl `playerctl --player=mpv play`, a process per command (what a script would do)

p50/p99 of each, and the ratios (goals: gateway <= 3x direct at p50, >= 10x faster than
playerctl). Play is idempotent while mpv plays, so every call does the same work. The same
run's floor: the gateway path is its two hops and a D-Bus call, so it cannot be faster than
hops + direct; gateway - hops is what the D-Bus call costs inside the gateway, beside direct
and beside after_hop (hops + after_hop is the floor with the D-Bus call made as in the path);
gateway - least is what the real gateway does beyond the least one. The brokered rows are
timed in a new order each round (no row always right after the same one).

Flood: the hostile test player sends PropertiesChanged at 10 000/s for S seconds while one
subscriber reads dev.kiki.media.subscribePlayback: the CPU time the gateway and the player
used over the window (goal: the gateway's below the player's), the subscriber's message rate
(coalesced: about one per player per events_interval), and the gateway's RSS before, after and
after a second flood (goal: flat).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dbus_fast import Message, MessageType  # noqa: E402
from dbus_fast.aio import MessageBus  # noqa: E402
from proc_cpu import cpu_seconds  # noqa: E402

from kikitest.dbus_fixtures import Stack, _gateway, start_hostile, start_mpv, stop  # noqa: E402
from libkiki.errors import KikiError  # noqa: E402
from libkiki.tools import ToolClient  # noqa: E402

LEAST = Path(__file__).resolve().with_name("least_gateway.py")
LEAST_NSID = "dev.kiki.bench.leastPlay"
LEAST_AIO_NSID = "dev.kiki.bench.leastPlayAsyncio"
GOAL = 3.0


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def wait_for(tools: ToolClient, name: str) -> None:
    """Until the gateway has registered its tools and lists the player ``name``."""
    for _ in range(400):
        with contextlib.suppress(KikiError):
            players = (await tools.call("dev.kiki.media.listPlayers"))["players"]
            if any(p["player"] == name for p in players):
                return
        await asyncio.sleep(0.05)
    raise SystemExit(f"the gateway never listed {name}")


def play() -> Message:
    return Message(
        destination="org.mpris.MediaPlayer2.mpv",
        path="/org/mpris/MediaPlayer2",
        interface="org.mpris.MediaPlayer2.Player",
        member="Play",
    )


async def latency(stack: Stack, calls: int, spawns: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {
        "gateway": [],
        "broker": [],
        "hops": [],
        "least": [],
        "least_aio": [],
        "direct": [],
        "after_hop": [],
        "playerctl": [],
    }
    mpv = {"player": "mpv"}
    async with ToolClient(stack.tools, timeout=10) as tools:
        await wait_for(tools, "mpv")
        answer = await tools.call("dev.kiki.media.play", mpv)
        least = start_least(stack, answer, "loop", LEAST_NSID)
        least_aio = start_least(stack, answer, "asyncio", LEAST_AIO_NSID)
        for _ in range(20):  # warm every path
            await tools.call("dev.kiki.media.play", mpv)
            await tools.call("dev.kiki.service.getInfo")
            await tools.call("dev.kiki.media.nowPlaying", mpv)
            await tools.call(LEAST_NSID, mpv)
            await tools.call(LEAST_AIO_NSID, mpv)
        rows = [
            ("gateway", "dev.kiki.media.play", mpv),
            ("broker", "dev.kiki.service.getInfo", {}),
            ("hops", "dev.kiki.media.nowPlaying", mpv),
            ("least", LEAST_NSID, mpv),
            ("least_aio", LEAST_AIO_NSID, mpv),
        ]
        order = random.Random(19)
        for _ in range(calls):
            # Each round in a new order, so that no row always follows the same one: a D-Bus
            # call right after another finds the bus daemon and mpv still running.
            order.shuffle(rows)
            for row, nsid, arguments in rows:
                start = time.perf_counter()
                await tools.call(nsid, arguments)
                out[row].append(time.perf_counter() - start)
    stop_least(least)
    stop_least(least_aio)
    bus = await MessageBus(bus_address=stack.address).connect()
    try:
        for _ in range(20):
            await bus.call(play())
        for _ in range(calls):
            start = time.perf_counter()
            reply = await bus.call(play())
            out["direct"].append(time.perf_counter() - start)
            assert reply.message_type == MessageType.METHOD_RETURN
    finally:
        bus.disconnect()
    bus = await MessageBus(bus_address=stack.address).connect()
    try:
        async with ToolClient(stack.tools, timeout=10) as tools:
            for i in range(calls + 20):
                await tools.call("dev.kiki.media.nowPlaying", mpv)
                start = time.perf_counter()
                reply = await bus.call(play())
                if i >= 20:
                    out["after_hop"].append(time.perf_counter() - start)
                assert reply.message_type == MessageType.METHOD_RETURN
    finally:
        bus.disconnect()
    out["playerctl"] = spawn_playerctl(stack, spawns)
    return out


def start_least(stack: Stack, answer: Any, way: str, nsid: str) -> subprocess.Popen[str]:
    """``least_gateway.py`` run ``way``, registered on the broker as ``nsid``, answering
    ``answer``."""
    proc = subprocess.Popen(
        [sys.executable, str(LEAST), way, stack.address, str(stack.tools), "mpv", nsid],
        env=stack.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write(json.dumps(answer) + "\n")
    proc.stdin.flush()
    if proc.stdout.readline().strip() != "ready":
        stop(proc)
        raise SystemExit("the least gateway did not register")
    return proc


def stop_least(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        stop(proc)


def spawn_playerctl(stack: Stack, spawns: int) -> list[float]:
    times = []
    for _ in range(spawns):
        start = time.perf_counter()
        subprocess.run(["playerctl", "--player=mpv", "play"], env=stack.env, check=True)
        times.append(time.perf_counter() - start)
    return times


async def flood(stack: Stack, seconds: float, rounds: int) -> dict[str, Any]:
    gateway = stack.procs["dbus-gateway"].pid
    player = start_hostile(stack.env, "flood")
    assert player.stdin is not None
    assert player.stdout is not None
    results: dict[str, Any] = {"rss": [rss_kib(gateway)], "rounds": []}
    try:
        async with ToolClient(stack.tools, timeout=10) as tools:
            await wait_for(tools, "flood")
            async with tools.subscribe("dev.kiki.media.subscribePlayback", session="bench") as sub:
                messages = sub.messages()
                count = 0

                async def reader() -> None:
                    nonlocal count
                    async for message in messages:
                        if "flood" in str(message):
                            count += 1

                reading = asyncio.ensure_future(reader())
                await asyncio.sleep(0.5)
                for _ in range(rounds):
                    count = 0
                    g0, p0, t0 = cpu_seconds(gateway), cpu_seconds(player.pid), time.monotonic()
                    player.stdin.write(f"rate 10000 {seconds}\n")
                    player.stdin.flush()
                    line = await asyncio.to_thread(player.stdout.readline)
                    elapsed = time.monotonic() - t0
                    sent = int(line.split()[1])
                    results["rounds"].append(
                        {
                            "sent_per_s": sent / elapsed,
                            "gateway_cpu": (cpu_seconds(gateway) - g0) / elapsed,
                            "player_cpu": (cpu_seconds(player.pid) - p0) / elapsed,
                            "events_per_s": count / elapsed,
                        }
                    )
                    await asyncio.sleep(0.5)
                    results["rss"].append(rss_kib(gateway))
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reading
    finally:
        stop(player)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--spawns", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true", help="200 calls, 20 spawns, 2 s floods")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.spawns, args.seconds = 200, 20, 2.0
    print(
        f"media benchmark: {os.cpu_count()} cpus, {sys.version.split()[0]}, "
        f"{args.calls} calls, {args.spawns} playerctl spawns, 2 floods of {args.seconds:g} s"
    )
    with contextlib.ExitStack() as stack:
        gateway = _gateway(stack)
        mpv = start_mpv(gateway.env)
        stack.callback(stop, mpv)
        times = asyncio.run(latency(gateway, args.calls, args.spawns))
        floods = asyncio.run(flood(gateway, args.seconds, 2))
    p50 = {k: statistics.median(v) for k, v in times.items()}
    print("\nplay on mpv, one call after another (ms):")
    for name, samples in times.items():
        print(f"  {name:<10} p50 {p50[name] * 1e3:8.3f}  p99 {pct(samples, 0.99) * 1e3:8.3f}")
    print(
        f"  gateway / direct at p50: {p50['gateway'] / p50['direct']:.2f}x (goal <= 3x); "
        f"playerctl / gateway: {p50['playerctl'] / p50['gateway']:.1f}x (goal >= 10x)"
    )
    floor = p50["hops"] + p50["direct"]
    print(
        f"  floor (hops + direct) / direct: {floor / p50['direct']:.2f}x; the D-Bus call inside "
        f"the gateway (gateway - hops) {(p50['gateway'] - p50['hops']) * 1e3:.3f} ms vs direct "
        f"{p50['direct'] * 1e3:.3f} ms, vs after_hop {p50['after_hop'] * 1e3:.3f} ms"
    )
    print(
        "  floor with the D-Bus call as the path makes it (hops + after_hop) / direct: "
        f"{(p50['hops'] + p50['after_hop']) / p50['direct']:.2f}x"
    )
    least = p50["least"] / p50["direct"]
    print(
        f"  least gateway / direct: {least:.2f}x (on asyncio: "
        f"{p50['least_aio'] / p50['direct']:.2f}x); gateway / least gateway: "
        f"{p50['gateway'] / p50['least']:.3f}x (on asyncio: "
        f"{p50['gateway'] / p50['least_aio']:.3f}x), gateway - least gateway "
        f"{(p50['gateway'] - p50['least']) * 1e6:.0f} us"
    )
    if least > GOAL:
        print(
            f"  floor-bound: the least Python gateway is {least:.2f}x direct, over the "
            f"{GOAL:g}x goal, in this run"
        )
    else:
        spare = GOAL * p50["direct"] - p50["least"]
        print(
            f"  not floor-bound in this run: the least Python gateway leaves {spare * 1e6:.0f} us "
            f"under the {GOAL:g}x goal for a gateway's own work"
        )
    print("\nflood of PropertiesChanged, one subscriber:")
    for i, r in enumerate(floods["rounds"], 1):
        print(
            f"  round {i}: {r['sent_per_s']:.0f} signals/s sent; CPU gateway "
            f"{r['gateway_cpu'] * 100:.1f}% vs player {r['player_cpu'] * 100:.1f}%; "
            f"subscriber {r['events_per_s']:.1f} messages/s"
        )
    print(
        "  gateway RSS (KiB) before, after round 1, after round 2: "
        + ", ".join(str(v) for v in floods["rss"])
    )


if __name__ == "__main__":
    main()
