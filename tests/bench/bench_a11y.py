"""a11y-server benchmark: snapshots, update latency, decoding and memory, beside orjson.

    .venv/bin/python tests/bench/bench_a11y.py [--sizes 1000,10000] [--repeats R] [--updates U]

For trees of each size (kikitest.a11y_fixtures.big_tree: names, values, bounds, actions), in one
run against a real kiki-a11y-server process:

  snapshot→wire    Subscribe sent until the whole snapshot frame is read off the socket
  snapshot→mirror  A11yClient.subscribe() until its mirror holds the tree (verified and decoded)
  decode           wire.decode of that snapshot frame (the verifier included)
  update→mirror    an app publishes a 10-node update until a subscriber's mirror has it (p50/p99)

beside the same tree as JSON in the same run: orjson.dumps and orjson.loads of the node dicts
(and of the 10 changed nodes). Memory: the server's RSS growth per subscriber that read its
snapshot, and per subscriber that stopped reading while 500 updates went by (bounded by the
write buffer and the pending-bytes limit). Everything runs pinned to one core (taskset -c 0:
the app, the subscriber and the server share it) and unpinned; figures are medians of repeats.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
sys.path.insert(0, str(REPO / "tests"))

from kikitest.a11y_fixtures import big_tree  # noqa: E402
from libkiki.a11y import wire  # noqa: E402
from libkiki.a11y.client import A11yClient  # noqa: E402
from libkiki.a11y.publisher import A11yPublisher  # noqa: E402
from libkiki.a11y.render import node_json  # noqa: E402
from libkiki.framing import FrameDecoder, encode_frame  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def start_server(run: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(run / "notify"))
    notify.settimeout(30)
    proc = subprocess.Popen(
        [str(BIN / "kiki-a11y-server")],
        env={**env, "NOTIFY_SOCKET": str(run / "notify")},
        stderr=subprocess.DEVNULL,
    )
    while b"READY=1" not in notify.recv(4096):
        pass
    notify.close()
    return proc


async def snapshot_to_wire(path: Path) -> tuple[float, bytes]:
    reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 20)
    decoder = FrameDecoder(256 << 20)
    t0 = time.perf_counter()
    writer.write(encode_frame(wire.encode(wire.Subscribe(1))))
    frame = b""
    while not frame:
        data = await reader.read(1 << 20)
        for f in decoder.feed(data):
            assert isinstance(f, bytes)
            frame = f
    elapsed = time.perf_counter() - t0
    writer.close()
    return elapsed, frame


async def snapshot_to_mirror(path: Path, size: int) -> float:
    async with A11yClient(path) as client:
        t0 = time.perf_counter()
        mirror = await client.subscribe()
        elapsed = time.perf_counter() - t0
        assert len(mirror) == size
    return elapsed


async def update_latencies(
    path: Path, pub: A11yPublisher, nodes: list[wire.Node], count: int
) -> list[float]:
    async with A11yClient(path) as client:
        await client.subscribe()
        tree = client.mirror.trees[pub.tree_id]
        times = []
        for k in range(count):
            start = (k * 97) % (len(nodes) - 10)
            changed = [n._replace(name=f"{n.name} #{k}") for n in nodes[start : start + 10]]
            target = tree.seq + 1
            t0 = time.perf_counter()
            await pub.publish(changed, wait=False)
            await client.wait_for(lambda m: tree.seq >= target)  # noqa: B023 -- awaited here
            times.append(time.perf_counter() - t0)
        assert client.resyncs == 0
    return times


async def subscriber_memory(
    path: Path, pid: int, pub: A11yPublisher, nodes: list[wire.Node]
) -> tuple[float, float]:
    """Server RSS growth per reading subscriber, and per subscriber that stopped reading."""
    count = 20
    before = rss(pid)
    readers = []
    for _ in range(count):
        r, w = await asyncio.open_unix_connection(str(path), limit=1 << 20)
        w.write(encode_frame(wire.encode(wire.Subscribe(1))))
        decoder = FrameDecoder(256 << 20)
        got = False
        while not got:
            for _f in decoder.feed(await r.read(1 << 20)):
                got = True
        readers.append(w)
    reading = (rss(pid) - before) / count
    for w in readers:
        w.close()
    await asyncio.sleep(0.2)
    before = rss(pid)
    stalled = []
    for _ in range(count):
        s = socket.socket(socket.AF_UNIX)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(str(path))
        s.sendall(encode_frame(wire.encode(wire.Subscribe(1))))
        stalled.append(s)
    for k in range(500):
        start = (k * 101) % (len(nodes) - 10)
        changed = [n._replace(name=f"{n.name} stalled {k}") for n in nodes[start : start + 10]]
        await pub.publish(changed, wait=k % 50 == 49)
    stuck = (rss(pid) - before) / count
    for s in stalled:
        s.close()
    return reading, stuck


def json_baseline(nodes: list[wire.Node], repeats: int) -> tuple[float, float, bytes]:
    docs = [node_json(n) for n in nodes]
    enc, dec = [], []
    blob = b""
    for _ in range(repeats):
        t0 = time.perf_counter()
        blob = orjson.dumps(docs)
        enc.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        orjson.loads(blob)
        dec.append(time.perf_counter() - t0)
    return statistics.median(enc), statistics.median(dec), blob


async def measure_size(
    path: Path, pid: int, size: int, repeats: int, updates: int
) -> dict[str, Any]:
    nodes = big_tree(size)
    out: dict[str, Any] = {}
    async with A11yPublisher(path, label="bench") as pub:
        await pub.publish(nodes, root_id=1)
        wire_times, frames = [], []
        for _ in range(repeats):
            t, frame = await snapshot_to_wire(path)
            wire_times.append(t)
            frames.append(frame)
        out["frame_bytes"] = len(frames[-1])
        out["snapshot_wire"] = statistics.median(wire_times)
        out["snapshot_mirror"] = statistics.median(
            [await snapshot_to_mirror(path, size) for _ in range(repeats)]
        )
        dec = []
        for frame in frames:
            t0 = time.perf_counter()
            wire.decode(frame)
            dec.append(time.perf_counter() - t0)
        out["decode"] = statistics.median(dec)
        out["json_enc"], out["json_dec"], blob = json_baseline(nodes, repeats)
        out["json_bytes"] = len(blob)
        lat = await update_latencies(path, pub, nodes, updates)
        out["update_p50"], out["update_p99"] = pct(lat, 0.5), pct(lat, 0.99)
        small_enc, small_dec, _ = json_baseline(nodes[:10], 200)
        out["update_json"] = small_enc + small_dec
        if size >= 10_000:
            out["mem_reading"], out["mem_stalled"] = await subscriber_memory(path, pid, pub, nodes)
    return out


def measure(sizes: list[int], repeats: int, updates: int) -> dict[int, dict[str, Any]]:
    run = Path(tempfile.mkdtemp(prefix="kiki-bench-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KIKI_", "LISTEN_"))}
    env.update(
        KIKI_RUNTIME_DIR=str(run),
        KIKI_STATE_DIR=str(run / "state"),
        KIKI_CONFIG_DIR=str(run / "etc"),
        KIKI_LOG_LEVEL="WARNING",
        KIKI_A11Y_SERVER_BROKER_TOOLS="false",
    )
    proc = start_server(run, env)
    try:
        return {
            size: asyncio.run(measure_size(run / "a11y.sock", proc.pid, size, repeats, updates))
            for size in sizes
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(run, ignore_errors=True)


def report(title: str, results: dict[int, dict[str, Any]]) -> None:
    ms = 1e3
    print(f"\n{title}")
    print(f"  {'case':<34} {'ours':>10} {'orjson':>10} {'ratio':>8}")
    for size, r in results.items():
        kib = r["frame_bytes"] / 1024, r["json_bytes"] / 1024
        print(f"  -- {size} nodes: frame {kib[0]:.0f} KiB, JSON {kib[1]:.0f} KiB")
        rows = [
            ("snapshot→wire (vs JSON encode)", r["snapshot_wire"], r["json_enc"]),
            ("snapshot→mirror (vs JSON decode)", r["snapshot_mirror"], r["json_dec"]),
            ("client decode (vs JSON decode)", r["decode"], r["json_dec"]),
            ("10-node update→mirror p50", r["update_p50"], r["update_json"]),
            ("10-node update→mirror p99", r["update_p99"], r["update_json"]),
        ]
        for name, ours, base in rows:
            print(f"  {name:<34} {ours * ms:>8.2f}ms {base * ms:>8.3f}ms {ours / base:>7.1f}x")
        if "mem_reading" in r:
            reading, stalled = r["mem_reading"] / 1024, r["mem_stalled"] / 1024
            print(f"  server RSS per subscriber (read its snapshot): {reading:.0f} KiB")
            print(f"  server RSS per stalled subscriber (500 updates): {stalled:.0f} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 1000 nodes, 2 repeats, 50 updates"
    )
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.repeats, args.updates = "1000", 2, 50
    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        f"a11y-server benchmark: {os.cpu_count()} cpus, {sys.version.split()[0]}, "
        f"trees of {args.sizes} nodes, {args.repeats} repeats, {args.updates} updates"
    )
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})  # children inherit it: taskset -c 0
    pinned = measure(sizes, args.repeats, args.updates)
    os.sched_setaffinity(0, allowed)
    unpinned = measure(sizes, args.repeats, args.updates)
    report("pinned to one core (taskset -c 0)", pinned)
    report("unpinned", unpinned)


if __name__ == "__main__":
    main()
