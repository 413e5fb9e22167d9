"""Remote control benchmark: intent -> result and screen change -> remote document, each beside
the same thing done locally, in one run.

    .venv/bin/python tests/bench/bench_remote.py [--rounds N] [--quick] [--no-edge]
                                                 [--relay-state /dev/shm]

A constellation in a temporary runtime directory: kiki-tool-broker (its policy trusts this
uid as a delegate and allows ``remote:*`` the demo tools), kiki-a11y-server (its policy puts
this process's app on the change stream), the demo tool
provider (``python -m kiki_cli.demos.tool_provider``), and kiki-sync-relay serving the session
``bench`` with its device link (``link_sessions``), linked upstream (``upstream_sessions``) to
the edge Worker under ``workerd`` (tests/kikitest/edge_fixtures.py), which trusts the device's
key. Every client runs in this one process and its event loop.

intent -> result, ``dev.kiki.demo.echo``; the cases take turns round by round, so the
machine's drift hits each alike:

  direct  ``ToolClient.call`` on the broker's socket: the baseline
  relay   ``SessionClient.call`` on the device relay: the intent written into the document until
          its final result is in this client's copy (the link admits it, writes ``running``,
          calls the broker on behalf of the client's ``sub`` with the intent id as the
          idempotency key, writes ``ok``; each write durable before it is relayed)
  edge    the same through the edge: workerd -> the relay's upstream link -> the device link ->
          the broker, and the result back the same way
  doc     for context, the document's share of ``relay``: the same call in a session no link
          serves, answered by a device-role client of this process that writes ``ok`` at once
          (one result write, no broker)

screen change -> seen: an app of this process renames one node of its 30-node tree; until

  local   an ``A11yClient`` on the a11y-server's socket has it in its mirror: the baseline
  stream  the broker's ``dev.kiki.a11y.subscribeChanges`` (what the link reads) delivers it
  relay   a ``SessionClient`` on the device relay sees the new name in the document's ``screen``
  edge    the same at the edge
  doc     for context, the document's share of ``relay``: a device-role client of this process
          writes the same ``screen`` value into a session no link serves, until a SessionClient
          there sees it (the relay's durable write and fan-out, the client's apply)

Rounds of the screen are 0.15 s apart: the link writes ``screen`` at most every 0.1 s, at the
leading edge, so each round measures a lone change, as a person's action makes one.

Goals: intent -> result via the device relay <= 10x the direct broker call at p50; screen
change -> the relay's remote document <= 5x the local subscriber at p50. Absolute numbers swing
with the machine's load: judge by the ratios each run prints.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
from pycrdt import Map

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv being measured
sys.path.insert(0, str(REPO / "tests"))

from kikitest.edge_fixtures import edge_server  # noqa: E402
from kikitest.sync_fixtures import DeviceRelay, YClient  # noqa: E402
from libkiki.a11y import wire  # noqa: E402
from libkiki.a11y.client import A11yClient  # noqa: E402
from libkiki.a11y.publisher import A11yPublisher  # noqa: E402
from libkiki.session import SessionClient  # noqa: E402
from libkiki.tools import ToolClient  # noqa: E402

SESSION = "bench"
FLOOR = "bench-floor"  # a session no link serves
TOOL = "dev.kiki.demo.echo"
A11Y_STREAM = "dev.kiki.a11y.subscribeChanges"
SCREEN_GAP = 0.15
TIMEOUT = 30.0
POLICY = """\
[[delegate]]
principals = ["uid:{uid}"]

[[allow]]
principals = ["remote:*"]
tools = ["dev.kiki.demo.*"]
"""
# The a11y-server streams only the apps everyone may subscribe to; this process's app has no
# app id of its own (no app unit), so it is pid-<pid>.
A11Y_POLICY = """\
[[allow]]
principals = ["*", "remote:*"]
rights = ["subscribe"]
apps = ["pid-*"]
"""

R, S, A = wire.ROLES, wire.STATES, wire.ACTIONS


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the constellation ---------------------------------------------------------------------------


class Constellation:
    """The broker, the a11y-server and the demo provider as processes in ``run``."""

    def __init__(self, run: Path) -> None:
        self.run = run
        (run / "etc").mkdir()
        (run / "etc" / "tool-policy.toml").write_text(POLICY.format(uid=os.getuid()))
        (run / "etc" / "a11y-policy.toml").write_text(A11Y_POLICY)
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("LISTEN_", "NOTIFY_SOCKET", "WATCHDOG_", "KIKI_"))
        }
        self.env.update(
            KIKI_RUNTIME_DIR=str(run),
            KIKI_STATE_DIR=str(run / "state"),
            KIKI_CONFIG_DIR=str(run / "etc"),
        )
        self.procs: list[subprocess.Popen[bytes]] = []

    def service(self, name: str) -> None:
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        path = self.run / f"notify-{name}"
        notify.bind(str(path))
        notify.settimeout(TIMEOUT)
        with open(self.run / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                [str(BIN / f"kiki-{name}")],
                env={**self.env, "NOTIFY_SOCKET": str(path)},
                stderr=log,
            )
        self.procs.append(proc)
        with notify:
            while b"READY=1" not in notify.recv(4096):
                pass

    def provider(self) -> None:
        with open(self.run / "demo.log", "wb") as log:
            proc = subprocess.Popen(
                [str(BIN / "python"), "-m", "kiki_cli.demos.tool_provider"],
                env=self.env,
                stderr=log,
            )
        self.procs.append(proc)

    async def provided(self) -> None:
        """Until the demo provider's tool is on the broker (asked: it is another process's)."""
        async with ToolClient(self.run / "tools.sock") as tools, asyncio.timeout(TIMEOUT):
            while TOOL not in {t.get("name") for t in await tools.list()}:  # noqa: ASYNC110
                await asyncio.sleep(0.05)

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def constellation() -> Iterator[Constellation]:
    run = Path(tempfile.mkdtemp(prefix="kiki-", dir="/tmp"))  # AF_UNIX paths are short
    world = Constellation(run)
    try:
        world.service("tool-broker")
        world.service("a11y-server")
        yield world
    finally:
        world.close()
        shutil.rmtree(run, ignore_errors=True)


async def linked(remote: SessionClient, what: str) -> bool:
    """Whether the device link serves the session: its ``tools`` show the demo tool."""
    try:
        async with asyncio.timeout(TIMEOUT):
            while TOOL not in (remote.state().get("tools") or []):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    except TimeoutError:
        print(f"  ({what}: the device link wrote no tools within {TIMEOUT:g} s: skipped)")
        return False
    return True


# -- intent -> result ----------------------------------------------------------------------------


class Answerer:
    """The least a device can do for an intent: a device-role client that answers each new one
    with ``ok`` at once (one write; no admission, no ``running``, no broker)."""

    def __init__(self, client: YClient) -> None:
        self.client = client
        self.state = client.doc.get("device", type=Map)
        self.intents = client.doc.get("intents", type=Map)
        self.results = client.doc.get("results", type=Map)
        self.intents.observe(self._added)

    def _added(self, event: Any) -> None:
        # Answered from the loop: a pycrdt document takes no write inside its own observer.
        loop = asyncio.get_running_loop()
        for key, change in event.keys.items():
            if change["action"] == "add":
                loop.call_soon(self._answer, key)

    def _answer(self, key: str) -> None:
        text = self.intents[key]["input"]["text"]
        self.results[key] = {"status": "ok", "output": {"text": text}, "at": "now"}


async def intents(
    tools: ToolClient, remotes: dict[str, SessionClient], rounds: int
) -> dict[str, list[float]]:
    def remote_call(remote: SessionClient) -> Callable[[int], Awaitable[Any]]:
        return lambda i: remote.call(TOOL, {"text": f"r{i}"}, timeout=TIMEOUT)

    cases: dict[str, Callable[[int], Awaitable[Any]]] = {
        "direct": lambda i: tools.call(TOOL, {"text": f"r{i}"}, timeout=TIMEOUT),
        **{name: remote_call(remote) for name, remote in remotes.items()},
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for i in range(rounds + 5):  # the first rounds warm up the connections and the caches
        for name, call in cases.items():
            t0 = time.perf_counter()
            output = await call(i)
            elapsed = time.perf_counter() - t0
            assert output["text"] == f"r{i}", output
            if i >= 5:
                times[name].append(elapsed * 1e3)
    return times


# -- screen change -> seen -----------------------------------------------------------------------

FORM_NODES = 30


def form(label: str) -> list[wire.Node]:
    """A window of 29 controls under it; node 2's name carries ``label``."""
    children = tuple(range(2, FORM_NODES + 1))
    nodes = [wire.Node(1, R["window"], "Bench", "", "", 0, (0, 0, 800, 600), (), children)]
    for i in children:
        name = label if i == 2 else f"control {i}"
        role = (R["button"], R["label"], R["textField"])[i % 3]
        actions = (A["press"],) if role == R["button"] else ()
        nodes.append(wire.Node(i, role, name, "", "", S["focusable"], (0, 0, 10, 10), actions, ()))
    return nodes


class Seen:
    """When each watcher first saw the round's name."""

    def __init__(self) -> None:
        self.target = ""
        self.at: dict[str, float] = {}
        self.events: dict[str, asyncio.Event] = {}

    def expect(self, target: str, watchers: list[str]) -> None:
        self.target = target
        self.at.clear()
        self.events = {w: asyncio.Event() for w in watchers}

    def saw(self, watcher: str, text: bytes) -> None:
        if watcher in self.at or not self.target:
            return
        if self.target.encode() in text:
            self.at[watcher] = time.perf_counter()
            self.events[watcher].set()


async def watch_local(client: A11yClient, seen: Seen, ref: tuple[int, int]) -> None:
    """The round's name in the local subscriber's mirror (waited for from the round's start)."""
    target = seen.target
    node = await client.wait_for(
        lambda mirror: (n := mirror.node(ref)) is not None and n.name == target, TIMEOUT
    )
    seen.saw("local", (node.name if isinstance(node, wire.Node) else target).encode())


async def watch_stream(tools: ToolClient, seen: Seen, ready: asyncio.Event) -> None:
    async with tools.subscribe(A11Y_STREAM) as stream:
        ready.set()
        async for message in stream.messages():
            seen.saw("stream", orjson.dumps(message))


async def watch_remote(name: str, remote: SessionClient, seen: Seen) -> None:
    async for key, value in remote.changes():
        if key == "screen":
            seen.saw(name, orjson.dumps(value))


async def screens(
    run: Path, tools: ToolClient, remotes: dict[str, SessionClient], rounds: int
) -> dict[str, list[float]]:
    seen = Seen()
    watchers = ["local", "stream", *remotes]
    times: dict[str, list[float]] = {w: [] for w in watchers}
    async with (
        A11yPublisher(run / "a11y.sock", label="bench") as app,
        A11yClient(run / "a11y.sock") as local,
        asyncio.TaskGroup() as tg,
    ):
        await app.publish(form("start"), root_id=1)
        await local.subscribe()
        ready = asyncio.Event()
        tasks = [
            tg.create_task(watch_stream(tools, seen, ready)),
            *(tg.create_task(watch_remote(n, r, seen)) for n, r in remotes.items()),
        ]
        await ready.wait()
        for i in range(rounds + 5):
            await asyncio.sleep(SCREEN_GAP)  # past the link's screen interval: a lone change
            target = f"round {i} {time.monotonic_ns()}"
            seen.expect(target, watchers)
            node = form(target)[1]
            waiting = tg.create_task(watch_local(local, seen, (app.tree_id, node.id)))
            t0 = time.perf_counter()
            await app.publish([node], wait=False)
            try:
                async with asyncio.timeout(TIMEOUT):
                    await waiting
                    for event in seen.events.values():
                        await event.wait()
            except TimeoutError:
                missing = sorted(set(watchers) - set(seen.at))
                raise TimeoutError(f"{', '.join(missing)} did not see round {i}") from None
            if i >= 5:
                for w in watchers:
                    times[w].append((seen.at[w] - t0) * 1e3)
        for task in tasks:
            task.cancel()
    return times


def renamed(screen: dict[str, Any], name: str) -> dict[str, Any]:
    """A copy of the link's ``screen`` value with the bench app's renamed node named ``name``."""
    value: dict[str, Any] = orjson.loads(orjson.dumps(screen))
    for app in value["apps"]:
        for node in app["nodes"]:
            if str(node.get("name", "")).startswith("round "):
                node["name"] = name
                return value
    raise LookupError("the bench app's node is not on the screen")


async def screen_floor(
    device: Answerer, remote: SessionClient, state: dict[str, Any], rounds: int
) -> list[float]:
    """The document's share: ``screen`` as the link wrote it, renamed and written by a
    device-role client, until ``remote`` sees it."""
    screen = state["screen"]
    times = []
    changes = remote.changes()
    for i in range(rounds + 5):
        await asyncio.sleep(SCREEN_GAP)  # paced as the linked rounds are
        target = f"round {i} {time.monotonic_ns()}"
        value = renamed(screen, target)
        t0 = time.perf_counter()
        device.state["screen"] = value
        async with asyncio.timeout(TIMEOUT):
            async for key, seen in changes:
                if key == "screen" and target.encode() in orjson.dumps(seen):
                    break
        if i >= 5:
            times.append((time.perf_counter() - t0) * 1e3)
    changes.close()
    return times


# -- the run -------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def joined(urls: dict[str, str]) -> AsyncIterator[dict[str, SessionClient]]:
    async with contextlib.AsyncExitStack() as stack:
        remotes = {}
        for name, url in urls.items():
            remote = await stack.enter_async_context(SessionClient(url))
            if await linked(remote, name):
                remotes[name] = remote
        yield remotes


def report(title: str, times: dict[str, list[float]], base: str, goals: dict[str, float]) -> None:
    print(title)
    print(f"  {'case':<8} {'p50 ms':>8} {'p99 ms':>8} {'p50 ratio':>10}  goal")
    floor = statistics.median(times[base])
    for name, values in times.items():
        p50 = statistics.median(values)
        goal = goals.get(name)
        said = ""
        if goal is not None:
            said = f"<= {goal:g}x: {'met' if p50 / floor <= goal else 'NOT met'}"
        print(f"  {name:<8} {p50:8.2f} {pct(values, 0.99):8.2f} {p50 / floor:9.1f}x  {said}")


async def measure(world: Constellation, relay: DeviceRelay, edge: Any, rounds: int) -> None:
    world.provider()
    await world.provided()
    urls = {"relay": relay.url(SESSION, relay.token(SESSION, "controller", sub="bench"))}
    if edge is not None:
        urls["edge"] = edge.url(SESSION, edge.token(SESSION, "controller", sub="bench"))
    device = await YClient.join(relay.url(FLOOR, relay.token(FLOOR, "device", sub="device")))
    answerer = Answerer(device)
    answerer.state["tools"] = [TOOL]
    urls["doc"] = relay.url(FLOOR, relay.token(FLOOR, "controller", sub="bench"))
    async with ToolClient(world.run / "tools.sock") as tools, joined(urls) as remotes:
        times = await intents(tools, remotes, rounds)
        report(
            f"intent -> result, {TOOL}, {rounds} rounds a case",
            times,
            "direct",
            {"relay": 10.0},
        )
        floor = remotes.pop("doc")
        times = await screens(world.run, tools, remotes, rounds)
        times["doc"] = await screen_floor(answerer, floor, remotes["relay"].state(), rounds)
        report(
            f"screen change -> seen, one node of {FORM_NODES} renamed, {rounds} rounds",
            times,
            "local",
            {"relay": 5.0},
        )
    await device.close()


def fs_type(path: Path) -> str:
    """The file system ``path`` is on, as /proc/mounts names it (the longest mount prefix)."""
    best, kind = "", "?"
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mount, fs, *_ = line.split()
        if str(path.resolve()).startswith(mount.rstrip("/") + "/") and len(mount) > len(best):
            best, kind = mount, fs
    return kind


def relay_settings(upstream: str | None) -> dict[str, str]:
    settings = {
        "link_sessions": SESSION,
        # Rounds come back to back from one person: neither the relay's per-client rate nor the
        # link's per-person intent rate is what is measured.
        "rate": "100000",
        "burst": "100000",
        "link_intent_rate": "100000",
        "link_intent_burst": "100000",
    }
    if upstream is not None:
        settings.update(upstream=upstream, upstream_sessions=SESSION)
    return settings


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="20 rounds a case")
    parser.add_argument("--no-edge", action="store_true", help="leave the edge (workerd) out")
    parser.add_argument(
        "--relay-state",
        type=Path,
        help="the relay's state directory's parent (default: beside the sockets, on /tmp's "
        "disk); /dev/shm shows what its fsyncs cost",
    )
    args = parser.parse_args()
    rounds = 20 if args.quick else args.rounds
    with constellation() as world:
        (world.run / "relay").mkdir()
        relay = DeviceRelay(world.run / "relay")
        relay.env.update(KIKI_RUNTIME_DIR=str(world.run), KIKI_CONFIG_DIR=str(world.run / "etc"))
        with contextlib.ExitStack() as stack:
            if args.relay_state is not None:
                state = Path(tempfile.mkdtemp(prefix="kiki-bench-", dir=args.relay_state))
                stack.callback(shutil.rmtree, state, True)
                relay.state = state
                relay.env["KIKI_STATE_DIR"] = str(state)
            print(f"relay state on {relay.state} ({fs_type(relay.state)})")
            edge = None if args.no_edge else stack.enter_context(edge_server(relay.key))
            upstream = None if edge is None else f"ws://127.0.0.1:{edge.port}"
            relay.env.update(
                {f"KIKI_SYNC_RELAY_{k.upper()}": v for k, v in relay_settings(upstream).items()}
            )
            relay.start()
            stack.callback(relay.close)
            await measure(world, relay, edge, rounds)


if __name__ == "__main__":
    asyncio.run(main())
