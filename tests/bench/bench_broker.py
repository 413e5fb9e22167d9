"""Tool broker benchmark: round trips and throughput beside an echo floor, in one run.

    .venv/bin/python tests/bench/bench_broker.py [--calls N] [--repeats R] [--client C]

Cases, each measured with the same client (one JSON-RPC line out, its answer line awaited from an
asyncio StreamReader; ``--client callbacks`` writes the next line from the read callback instead):

  floor      an asyncio echo server on a Unix socket with the same NDJSON framing
  relay      the shape of (b) with no work in it: a process passing bytes to the echo server
             and its answers back (two hops, four process wake-ups; shown for context, the
             goals are against the floor)
  ping       the broker's JSON-RPC `ping`: its connection layer alone (for context)
  (a) own    tools/call of the broker's own dev.kiki.service.getInfo
  (b) fwd    tools/call forwarded to a provider process (validated in and out)
  (c) 8x     8 clients pipelining 16 calls each to (a), against 8 clients on the floor
  least (a)  the least a Python broker on asyncio does for (a), and least (b) for (b): parse the
             call, answer with the output twice, append a hash-chained audit line and its head;
             (b) forwarded to a provider process that only parses and answers. No validation,
             policy, limits or JSON-RPC checks: how near the goals Python itself gets on this
             machine (for context, like relay)
  least (a)+ least (a) and least (b) with the checks every call must pass, by the broker's
  least (b)+ own code: the JSON-RPC request's shape and id, the caller's policy decision, the
             lexicon's validation of input and output
  least (c)+  (c) against least (a)+: what a Python broker doing each call's required work (its
             checks and audit line, the answers of one read in one write, as the broker does)
             reaches pipelined, against the same floor (for context, like relay)

Everything runs twice: pinned to one core (``taskset -c 0``: the client, the broker and the
provider share it) and unpinned. Latencies are medians over the repeats of each repeat's p50/p99;
the ratio is the median over the repeats of each repeat's p50 against that repeat's floor, with
its range.
Where the time goes: the CPU per call of the client and of each server process of the case
(the scheduler's ns, woken side's share of each switch included), and their minor page faults
per call, medians over the repeats.
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

import orjson
from proc_cpu import cpu_seconds, minor_faults

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv being measured: .venv, or another Python's

# Every process of the benchmark reads as the broker and its providers do (libkiki's
# connections): into one buffer it keeps (asyncio.BufferedProtocol), so the floor is not charged
# for a way of reading the broker does not use. A Protocol's data_received costs a fresh 256 KiB
# bytes object per read (~13 µs a round trip on this VM when the echo and the client both did
# it), and whether glibc hands that memory back and faults it in again on the next read depends
# on where the heap happens to stand: 2 page faults per call turned the same code's p50 from 70
# into 105 µs between runs (+20 µs in the client, +12 µs in its peer). The faults per call are
# printed, so such a mode shows.
ECHO_SERVER = """
import asyncio, sys

class Echo(asyncio.BufferedProtocol):
    def connection_made(self, transport):
        self.t = transport
        self.buf = bytearray(1 << 18)
        self.view = memoryview(self.buf)
    def get_buffer(self, sizehint):
        return self.view
    def buffer_updated(self, n):
        self.t.write(bytes(self.view[:n]))

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(Echo, sys.argv[1])
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

RELAY_SERVER = """
import asyncio, sys

class Side(asyncio.BufferedProtocol):
    def __init__(self, other=None):
        self.other = other  # the transport that what this side reads is written to
        self.buf = bytearray(1 << 18)
        self.view = memoryview(self.buf)
    def get_buffer(self, sizehint):
        return self.view
    def buffer_updated(self, n):
        self.other.write(bytes(self.view[:n]))

class Relay(Side):
    def connection_made(self, transport):
        self.down = transport
        self.other = None
        self.pending = []
        asyncio.ensure_future(self.connect())
    async def connect(self):
        loop = asyncio.get_running_loop()
        up, _ = await loop.create_unix_connection(lambda: Side(self.down), sys.argv[2])
        self.other = up
        for data in self.pending:
            up.write(data)
    def buffer_updated(self, n):
        if self.other is None:
            self.pending.append(bytes(self.view[:n]))
        else:
            self.other.write(bytes(self.view[:n]))

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(Relay, sys.argv[1])
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

# The least a broker written in Python on asyncio does for (a) and (b): what it cannot leave out.
# It parses each call, answers with the tool's output twice (structure and JSON text, as MCP
# results carry it) and appends a hash-chained audit line and its head (two writes) before it
# answers; for (b) it forwards the call to a provider process (mode "provider": parse, answer)
# and maps the answer back. No validation, policy, limits, JSON-RPC checks or error handling:
# a bound to compare the broker with, not a broker. Every line is read into a kept buffer.
# Modes "own+" and "forward+" add the checks the issue requires of every call, done by the
# broker's own code: the JSON-RPC request's shape and its id (not in flight, under the in-flight
# limit), the policy decision, and the validation of input and output (the test tools' lexicons
# are read from $KIKI_BENCH_LEXICONS).
# argv: mode ("own", "own+", "forward", "forward+" or "provider"), socket, then for "forward"
# and "forward+" the provider's socket.
LEAST_SERVER = """
import asyncio, hashlib, os, sys, time, orjson

mode, path = sys.argv[1], sys.argv[2]
checked = mode.endswith("+")  # "own+", "forward+": with the checks every call must pass
CANON = orjson.OPT_SORT_KEYS
started = time.monotonic()
# getInfo's counters as the broker's answer carries them in the benchmark (its 15 names), so
# that the least answer is as long and its output check as long as the broker's.
counters = dict.fromkeys(
    ["calls_ok", "connections", "connections_accepted", "detached_running", "requests",
     "stdio_sessions_open", "stream_lost", "stream_opened", "stream_published",
     "stream_rejected", "stream_stale", "stream_subscriptions", "stream_topics",
     "stream_upstreams", "stream_writers"], 0)
if checked:
    from kiki_tool_broker.policy import Caller, Policy
    from kiki_tool_broker.schemas import Catalog
    from libkiki.peer import peer_cred
    from libkiki.rpc.messages import request_problem
    sys.path.insert(0, os.environ["KIKI_BENCH_LEXICONS"])
    from kikitest.broker_lexicons import LEXICONS
    catalog, policy = Catalog.load(), Policy()
    catalog.add_documents(LEXICONS, owner=1)

class Audit:
    def __init__(self, stem):
        self.fd = os.open(stem + ".log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.head = os.open(stem + ".head", os.O_WRONLY | os.O_CREAT, 0o600)
        self.seq, self.prev = 0, "0" * 64
    def append(self, tool, arguments, t0):
        self.seq += 1
        body = {"seq": self.seq, "time": time.time_ns(), "caller": {"uid": 0, "pid": 1},
                "tool": tool, "outcome": "ok", "durationUs": int((time.monotonic() - t0) * 1e6),
                "argsHash": hashlib.sha256(orjson.dumps(arguments, option=CANON)).hexdigest(),
                "prev": self.prev}
        canonical = orjson.dumps(body, option=CANON)
        self.prev = hashlib.sha256(self.prev.encode() + canonical).hexdigest()
        os.write(self.fd, canonical + b"\\n")
        os.pwrite(self.head, b"%d %s" % (self.seq, self.prev.encode()), 0)

def answer(rid, output):
    text = orjson.dumps(output).decode()
    result = {"content": [{"type": "text", "text": text}], "structuredContent": output}
    return orjson.dumps({"jsonrpc": "2.0", "id": rid, "result": result}) + b"\\n"

class Lines(asyncio.BufferedProtocol):
    def connection_made(self, transport):
        self.t = transport
        self.view = memoryview(bytearray(1 << 18))
        self.rest = b""
        if checked:
            self.caller = Caller.of(peer_cred(transport.get_extra_info("socket"), app=False))
            self.in_flight = set()
    def get_buffer(self, sizehint):
        return self.view
    def buffer_updated(self, n):
        *lines, self.rest = (self.rest + bytes(self.view[:n])).split(b"\\n")
        for line in lines:
            self.line(orjson.loads(line))
    def admit(self, call):
        # A JSON-RPC request, its id not in flight, under the in-flight limit; the caller's
        # policy decision; its input valid by the tool's lexicon. Its schema, for the output.
        problem = request_problem(call)
        rid = call["id"]
        if problem or rid in self.in_flight or len(self.in_flight) >= 64:
            raise SystemExit(problem or "id in flight, or too many")
        self.in_flight.add(rid)
        params = call["params"]
        schema = catalog.tool(params["name"])
        allowed, why = policy.allows(self.caller, params["name"], schema.kind, (os.getuid(),))
        if not allowed:
            raise SystemExit(why)
        schema.validate_input(params.get("arguments", {}))
        return schema

class Own(Lines):
    def buffer_updated(self, n):
        # The answers of one read leave in one write, as the broker's do (pipelined calls).
        self.out = []
        super().buffer_updated(n)
        if self.out:
            self.t.write(b"".join(self.out))
    def line(self, call):
        t0 = time.monotonic()
        counters["requests"] += 1
        schema = self.admit(call) if checked else None
        params = call["params"]
        name, arguments = params["name"], params.get("arguments", {})
        output = {"name": "tool-broker", "version": "0", "pid": os.getpid(),
                  "uptimeSeconds": int(t0 - started), "status": "ready",
                  "statusText": "serving", "counters": dict(counters), "activated": False,
                  "libkiki": "0.1.0"}
        if schema is not None:
            schema.validate_output(output)
        audit.append(name, arguments, t0)
        counters["calls_ok"] += 1
        self.out.append(answer(call["id"], output))
        if checked:
            self.in_flight.discard(call["id"])

class Provider(Lines):
    def line(self, call):
        self.t.write(answer(call["id"], {"text": call["params"]["arguments"]["text"]}))

pending = {}

class Forward(Lines):
    def line(self, call):
        t0 = time.monotonic()
        schema = self.admit(call) if checked else None
        params = call["params"]
        counters["requests"] += 1
        rid = counters["requests"]
        pending[rid] = (self, call["id"], params["name"], params["arguments"], t0, schema)
        meta = {"dev.kiki/caller": {"uid": 0, "pid": 1}}
        up.write(orjson.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params":
                               {"name": params["name"], "arguments": params["arguments"],
                                "_meta": meta}}) + b"\\n")

class Upstream(Lines):
    def line(self, reply):
        down, rid, tool, arguments, t0, schema = pending.pop(reply["id"])
        output = reply["result"]["structuredContent"]
        if schema is not None:
            schema.validate_output(output)
        audit.append(tool, arguments, t0)
        down.t.write(answer(rid, output))
        if checked:
            down.in_flight.discard(rid)

async def main():
    global audit, up
    loop = asyncio.get_running_loop()
    audit = None if mode == "provider" else Audit(path)
    if mode.startswith("forward"):
        up, _ = await loop.create_unix_connection(Upstream, sys.argv[3])
    kind = {"own": Own, "forward": Forward, "provider": Provider}[mode.rstrip("+")]
    await loop.create_unix_server(kind, path)
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

PROVIDER = """
import asyncio, sys
sys.path.insert(0, {tests!r})
from kikitest.broker_lexicons import ECHO, LEXICONS
from libkiki.tools import ToolProvider

provider = ToolProvider({path!r}, lexicons=LEXICONS)

@provider.tool(ECHO)
async def echo(args, call):
    return {{"text": args["text"]}}

async def main():
    async with provider.connect():
        print("ready", flush=True)
        await provider.serve_forever()

asyncio.run(main())
"""


def own_call(rid: int) -> bytes:
    return (
        orjson.dumps(
            {
                "jsonrpc": "2.0",
                "id": rid,
                "method": "tools/call",
                "params": {"name": "dev.kiki.service.getInfo"},
            }
        )
        + b"\n"
    )


OWN = own_call(1)
FWD = (
    orjson.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "org.example.test.echo", "arguments": {"text": "hello"}},
        }
    )
    + b"\n"
)
FLOOR = OWN  # the echo server sends the same bytes back
PING = b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n'


def timed(
    path: Path, line: bytes, calls: int, servers: list[int]
) -> tuple[list[float], list[float], list[float]]:
    """Round trips; the CPU µs and the minor page faults per call of the client and of each
    server process."""
    before = [cpu_seconds(pid) for pid in servers]
    faults = [minor_faults(pid) for pid in [os.getpid(), *servers]]
    client = time.thread_time()
    times = asyncio.run(round_trips(path, line, calls))
    used = [time.thread_time() - client] + [
        cpu_seconds(pid) - b for pid, b in zip(servers, before, strict=True)
    ]
    faulted = [
        (minor_faults(pid) - f) / calls
        for pid, f in zip([os.getpid(), *servers], faults, strict=True)
    ]
    return times, [u / calls * 1e6 for u in used], faulted


class Client(asyncio.BufferedProtocol):
    """The minimal client: writes a line, reads the answer into a buffer it keeps, and writes
    the next line from the read callback, up to ``depth`` lines in flight. Every answer's
    round trip is timed; any error answer ends the benchmark, so only real calls count."""

    def __init__(self, lines: list[bytes], depth: int, done: asyncio.Future[None]) -> None:
        self.lines = lines
        self.depth = depth
        self.done = done
        self.buf = bytearray(1 << 20)
        self.view = memoryview(self.buf)
        self.filled = 0
        self.sent_at: list[float] = []
        self.times: list[float] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        self.transport = transport
        for _ in range(min(self.depth, len(self.lines))):
            self.send()

    def send(self) -> None:
        self.sent_at.append(time.perf_counter())
        self.transport.write(self.lines[len(self.sent_at) - 1])

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view[self.filled :]

    def buffer_updated(self, nbytes: int) -> None:
        now = time.perf_counter()
        start = self.filled
        self.filled += nbytes
        end = self.buf.find(b"\n", start, self.filled)
        begin = 0
        while end >= 0:
            if b'"error"' in self.buf[begin : min(begin + 40, end)]:
                reply = bytes(self.buf[begin : min(end, begin + 200)])
                self.done.set_exception(SystemExit(f"benchmark call failed: {reply!r}"))
                self.transport.close()
                return
            self.times.append(now - self.sent_at[len(self.times)])
            if len(self.sent_at) < len(self.lines):
                self.send()
            elif len(self.times) == len(self.lines):
                self.done.set_result(None)
            begin = end + 1
            end = self.buf.find(b"\n", begin, self.filled)
        if begin:  # keep the unfinished line, at the buffer's start
            self.buf[: self.filled - begin] = self.buf[begin : self.filled]
            self.filled -= begin

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(SystemExit(f"the server closed the connection: {exc}"))


async def callback_client(path: Path, lines: list[bytes], depth: int) -> list[float]:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    transport, proto = await loop.create_unix_connection(
        lambda: Client(lines, depth, done), str(path)
    )
    try:
        await done
    finally:
        transport.close()
    return proto.times


class Feed(asyncio.BufferedProtocol):
    """Reads into a buffer it keeps and feeds a StreamReader: asyncio's streams, without the
    transport's fresh 256 KiB bytes object per read."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.view = memoryview(bytearray(1 << 18))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        self.reader.feed_data(bytes(self.view[:nbytes]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.reader.feed_eof()


async def streams_client(path: Path, lines: list[bytes], depth: int) -> list[float]:
    """An agent's shape: write a call, await its answer line (StreamReader.readline), up to
    ``depth`` in flight; any error answer ends the benchmark, so only real calls count."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    transport, _ = await loop.create_unix_connection(lambda: Feed(reader), str(path))
    sent_at: list[float] = []
    times: list[float] = []
    try:
        while len(times) < len(lines):
            while len(sent_at) < len(lines) and len(sent_at) - len(times) < depth:
                sent_at.append(time.perf_counter())
                transport.write(lines[len(sent_at) - 1])
            reply = await reader.readline()
            times.append(time.perf_counter() - sent_at[len(times)])
            if not reply.endswith(b"\n") or b'"error"' in reply[:40]:
                raise SystemExit(f"benchmark call failed: {reply[:200]!r}")
    finally:
        transport.close()
    return times


CLIENTS = {"streams": streams_client, "callbacks": callback_client}
client = streams_client  # main() sets it from --client


async def round_trips(path: Path, line: bytes, calls: int) -> list[float]:
    return await client(path, [line] * calls, 1)


async def pipelined(path: Path, clients: int, depth: int, calls: int) -> float:
    """``clients`` connections, each keeping ``depth`` calls of (a) in flight, every call with
    an id of its own (an id still in flight may not be used again)."""
    lines = [own_call(rid) for rid in range(1, calls + 1)]
    t0 = time.perf_counter()
    await asyncio.gather(*(client(path, lines, depth) for _ in range(clients)))
    return clients * calls / (time.perf_counter() - t0)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "ready" not in line:
        raise SystemExit(f"{cmd[0]} did not start: {line!r}")
    return proc


def start_broker(run: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(run / "notify"))
    notify.settimeout(30)
    proc = subprocess.Popen(
        [str(BIN / "kiki-tool-broker")],
        env={**env, "NOTIFY_SOCKET": str(run / "notify")},
        stderr=subprocess.DEVNULL,
        text=True,
    )
    while b"READY=1" not in notify.recv(4096):
        pass
    notify.close()
    return proc


Result = dict[str, tuple[float, float, float]]
Cpu = dict[str, list[float]]
Spread = dict[str, tuple[float, float, float]]


def measure(calls: int, repeats: int) -> tuple[Result, Cpu, Cpu, Spread]:
    run = Path(tempfile.mkdtemp(prefix="kiki-bench-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KIKI_", "LISTEN_"))}
    env.update(
        KIKI_RUNTIME_DIR=str(run),
        KIKI_STATE_DIR=str(run / "state"),
        KIKI_CONFIG_DIR=str(run / "etc"),
        KIKI_LOG_LEVEL="WARNING",
    )
    procs = []
    try:
        procs.append(
            echo := start([sys.executable, "-c", ECHO_SERVER, str(run / "echo.sock")], env)
        )
        relay_args = [str(run / "relay.sock"), str(run / "echo.sock")]
        procs.append(relay := start([sys.executable, "-c", RELAY_SERVER, *relay_args], env))
        procs.append(broker := start_broker(run, env))
        tools = run / "tools.sock"
        provider_code = PROVIDER.format(tests=str(REPO / "tests"), path=str(tools))
        procs.append(provider := start([sys.executable, "-c", provider_code], env))
        least = [sys.executable, "-c", LEAST_SERVER]
        least_env = {**env, "KIKI_BENCH_LEXICONS": str(REPO / "tests")}
        bounds: dict[str, subprocess.Popen[str]] = {}
        least_provider_sock = str(run / "least-provider.sock")
        for mode in ("provider", "own", "own+", "forward", "forward+"):
            where = [least_provider_sock] if mode.startswith("forward") else []
            sock = least_provider_sock if mode == "provider" else str(run / f"least-{mode}.sock")
            bounds[mode] = start([*least, mode, sock, *where], least_env)
            procs.append(bounds[mode])
        upstream = bounds["provider"]
        results: dict[str, list[tuple[float, float]]] = {}
        cpu: dict[str, list[list[float]]] = {}
        faults: dict[str, list[list[float]]] = {}
        rates: dict[str, list[float]] = {}
        for _ in range(repeats):
            for name, path, line, servers in (
                ("floor", run / "echo.sock", FLOOR, [echo]),
                ("relay", run / "relay.sock", FLOOR, [relay, echo]),
                ("ping", tools, PING, [broker]),
                ("(a) own", tools, OWN, [broker]),
                ("(b) fwd", tools, FWD, [broker, provider]),
                ("least (a)", run / "least-own.sock", OWN, [bounds["own"]]),
                ("least (a)+", run / "least-own+.sock", OWN, [bounds["own+"]]),
                ("least (b)", run / "least-forward.sock", FWD, [bounds["forward"], upstream]),
                ("least (b)+", run / "least-forward+.sock", FWD, [bounds["forward+"], upstream]),
            ):
                times, used, faulted = timed(path, line, calls, [p.pid for p in servers])
                results.setdefault(name, []).append((pct(times, 0.5), pct(times, 0.99)))
                cpu.setdefault(name, []).append(used)
                faults.setdefault(name, []).append(faulted)
            for name, path in (
                ("floor 8x16", run / "echo.sock"),
                ("(c) 8x16 own", tools),
                ("least (c)+ 8x16", run / "least-own+.sock"),
            ):
                rate = asyncio.run(pipelined(path, 8, 16, max(calls // 4, 100)))
                rates.setdefault(name, []).append(rate)
        out = {}
        spread = {}
        for name, pairs in results.items():
            p50 = statistics.median(p for p, _ in pairs) * 1e6
            p99 = statistics.median(q for _, q in pairs) * 1e6
            out[name] = (p50, p99, 1e6 / p50)
            # Each repeat's p50 against the floor measured just before it: the machine's speed
            # drifts over minutes, and the pairs drift together.
            ratios = [p / f for (p, _), (f, _) in zip(pairs, results["floor"], strict=True)]
            spread[name] = (statistics.median(ratios), min(ratios), max(ratios))
        for name, values in rates.items():
            out[name] = (0.0, 0.0, statistics.median(values))

        def per_call(table: dict[str, list[list[float]]]) -> Cpu:
            return {
                name: [statistics.median(col) for col in zip(*rows, strict=True)]
                for name, rows in table.items()
            }

        return out, per_call(cpu), per_call(faults), spread
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(run, ignore_errors=True)


SERVERS = {
    "floor": ("echo",),
    "relay": ("relay", "echo"),
    "ping": ("broker",),
    "(a) own": ("broker",),
    "(b) fwd": ("broker", "provider"),
    "least (a)": ("least",),
    "least (a)+": ("least",),
    "least (b)": ("least", "provider"),
    "least (b)+": ("least", "provider"),
}


def report(title: str, r: Result, cpu: Cpu, faults: Cpu, spread: Spread) -> None:
    print(f"\n{title}")
    print(
        f"  {'case':<14} {'p50 µs':>9} {'p99 µs':>9} {'calls/s':>10} "
        f"{'p50/floor (range)':>19}   CPU µs per call; page faults per call"
    )
    for name in SERVERS:
        p50, p99, rate = r[name]
        ratio, low, high = spread[name]
        used = cpu[name]
        where = " ".join(
            f"{who} {us:.1f}" for who, us in zip(("client", *SERVERS[name]), used, strict=True)
        )
        faulted = " ".join(f"{n:.2f}" for n in faults[name])
        ratios = f"{ratio:.2f}x ({low:.2f}-{high:.2f})"
        print(
            f"  {name:<14} {p50:>9.1f} {p99:>9.1f} {rate:>10.0f} {ratios:>19}   {where}; {faulted}"
        )
    base = r["floor 8x16"][2]
    for name in ("floor 8x16", "(c) 8x16 own", "least (c)+ 8x16"):
        rate = r[name][2]
        print(f"  {name:<14} {'':>9} {'':>9} {rate:>10.0f} {base / rate:>9.2f}x slower")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="round trips per case and repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--client",
        choices=CLIENTS,
        default="streams",
        help="streams: await each answer line from an asyncio StreamReader (an agent's shape; "
        "the default); callbacks: write the next call from the read callback (the least a "
        "client can spend, which makes the floor smaller and every ratio larger)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 200 calls, 1 repeat per case"
    )
    args = parser.parse_args()
    if args.quick:
        args.calls, args.repeats = 200, 1
    global client
    client = CLIENTS[args.client]
    print(
        f"tool broker benchmark: {os.cpu_count()} cpus, {sys.version.split()[0]}, "
        f"{args.calls} calls x {args.repeats} repeats, {args.client} client"
    )
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})  # children inherit it: taskset -c 0
    pinned = measure(args.calls, args.repeats)
    os.sched_setaffinity(0, allowed)
    unpinned = measure(args.calls, args.repeats)
    report("pinned to one core (taskset -c 0)", *pinned)
    report("unpinned", *unpinned)


if __name__ == "__main__":
    main()
