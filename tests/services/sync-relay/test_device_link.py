"""The device link against real processes: the tool broker (trusting the relay as a delegate),
the a11y-server (its screen stream through the broker), an app publishing a tree, a tool
provider counting its calls, and the relay serving session ``home`` with its link. Clients
are pycrdt y-websocket clients holding tokens of each role."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Map, create_update_message

from kikitest.a11y_fixtures import form_tree
from kikitest.sync_fixtures import NODE_DIR, DeviceRelay, YClient
from kikitest.sync_fixtures import eventually as _eventually
from libkiki.a11y import wire
from libkiki.a11y.publisher import A11yPublisher
from libkiki.rpc import connect_unix
from libkiki.sync import ADMIN_SOCKET
from libkiki.tools import ToolCall, ToolProvider

pytestmark = pytest.mark.integration

SESSION = "home"
ECHO = "dev.kiki.demo.echo"
CLOSE = "dev.kiki.notify.close"
WAIT = 20.0


def policy(sockdir: Path, extra: str = "") -> None:
    """The relay (this test's uid) may call for remote people; any remote person may call the
    demo tools and act on the screen, nothing else; every app is on the a11y change stream.
    ``extra``: more rules for the broker."""
    etc = sockdir / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "tool-policy.toml").write_text(
        f'[[delegate]]\nprincipals = ["uid:{os.getuid()}"]\n\n'
        '[[allow]]\nprincipals = ["remote:*"]\n'
        'tools = ["dev.kiki.demo.*", "dev.kiki.a11y.act", "dev.kiki.notify.close"]\n' + extra
    )
    # The a11y-server decides an act relayed for a person for that person (remote:...).
    (etc / "a11y-policy.toml").write_text(
        '[[allow]]\nprincipals = ["*", "remote:*"]\nrights = ["subscribe"]\napps = ["*"]\n\n'
        '[[allow]]\nprincipals = ["remote:*"]\nrights = ["act"]\napps = ["*"]\n'
    )


@dataclass
class Echo:
    """The demo echo tool, counting what it runs; a text of ``hold`` waits for ``release``.
    Beside it ``dev.kiki.notify.close``, whose input is an integer, noting what it was given."""

    runs: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    closed: list[Any] = field(default_factory=list)

    def provider(self, path: Path) -> ToolProvider:
        provider = ToolProvider(path)

        @provider.tool(ECHO)
        async def echo(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
            self.runs.append(args["text"])
            if args["text"] == "hold":
                await self.release.wait()
            return {"text": args["text"], "caller": call.caller}

        @provider.tool(CLOSE)
        async def close(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
            self.closed.append(args["id"])
            return {"ok": True}

        return provider


@dataclass
class Device:
    sockdir: Path
    spawn_service: Any
    echo: Echo
    relay: DeviceRelay
    broker: Any = None
    a11y: Any = None
    app: A11yPublisher | None = None
    pressed: list[tuple[int, int]] = field(default_factory=list)  # (node id, action)
    clients: list[YClient] = field(default_factory=list)

    broker_env: dict[str, str] = field(default_factory=dict)

    def start_broker(self) -> None:
        self.broker, notes = self.spawn_service("tool-broker", extra_env=self.broker_env)
        notes.wait_for("READY")

    def start_a11y(self) -> None:
        env = {"KIKI_LOG_LEVEL": "WARNING"}
        self.a11y, notes = self.spawn_service("a11y-server", extra_env=env)
        notes.wait_for("READY")

    @staticmethod
    def stop(proc: Any) -> None:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)

    async def join(self, role: str = "controller", sub: str = "alice") -> YClient:
        token = self.relay.token(SESSION, role, sub=sub)
        client = await YClient.join(self.relay.url(SESSION, token))
        self.clients.append(client)
        return client

    def audit(self) -> list[dict[str, Any]]:
        log = self.sockdir / "state" / "audit.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


async def eventually(
    check: Callable[[], bool], within: float = WAIT, about: YClient | None = None
) -> None:
    """Wait until ``check()`` holds; a timeout says what ``about`` held then."""
    try:
        await _eventually(check, within)
    except TimeoutError:
        held = {"device": state(about), "results": results(about)} if about else {}
        raise AssertionError(f"not within {within:g} s; {json.dumps(held)[:6000]}") from None


def state(client: YClient) -> dict[str, Any]:
    value: dict[str, Any] = client.doc.get("device", type=Map).to_py() or {}
    return value


def results(client: YClient) -> dict[str, Any]:
    value: dict[str, Any] = client.doc.get("results", type=Map).to_py() or {}
    return value


def intent(tool: str, arguments: dict[str, Any], by: str = "alice", **extra: Any) -> dict[str, Any]:
    key = uuid.uuid4().hex
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return {"id": key, "tool": tool, "input": arguments, "by": by, "createdAt": now, **extra}


def ask(client: YClient, tool: str, arguments: dict[str, Any], **extra: Any) -> str:
    entry = intent(tool, arguments, **extra)
    client.doc.get("intents", type=Map)[entry["id"]] = entry
    return str(entry["id"])


async def final(client: YClient, key: str) -> dict[str, Any]:
    def done() -> bool:
        return results(client).get(key, {}).get("status") not in (None, "running")

    await eventually(done, WAIT, about=client)
    answer: dict[str, Any] = results(client)[key]
    return answer


async def app_screen(client: YClient, check: Callable[[list[dict[str, Any]]], bool]) -> None:
    def ok() -> bool:
        apps = state(client).get("screen", {}).get("apps", [])
        return bool(apps) and check(apps)

    await eventually(ok, WAIT, about=client)


async def ready(client: YClient) -> None:
    """Until the client sees the constellation whole: the app on the screen, and the tools of
    the demo provider and of the a11y-server (each registers with the broker when it can)."""
    await app_screen(client, lambda apps: "Save" in names(apps))
    wanted = {ECHO, "dev.kiki.a11y.snapshot"}
    await eventually(lambda: wanted <= set(state(client).get("tools", [])), about=client)


def names(apps: list[dict[str, Any]]) -> set[str]:
    return {node["name"] for app in apps for node in app["nodes"] if "name" in node}


def values(apps: list[dict[str, Any]]) -> set[str]:
    return {node["value"] for app in apps for node in app["nodes"] if "value" in node}


async def show(sockdir: Path) -> dict[str, Any]:
    """The link as ``kiki session show home`` reads it from the admin channel."""
    async with connect_unix(sockdir / ADMIN_SOCKET) as admin:
        answer = await admin.request("dev.kiki.session.show", {"name": SESSION})
    link: dict[str, Any] = answer["deviceLink"]
    return link


def show_logs(sockdir: Path) -> None:
    """Print the relay's logs: pytest shows them when the test failed."""
    for log in sorted(sockdir.glob("relay-*.log")):
        print(f"--- {log.name}\n{log.read_text(errors='replace')[-20000:]}")


@contextlib.asynccontextmanager
async def device(
    sockdir: Path,
    spawn_service: Any,
    broker_env: dict[str, str] | None = None,
    extra_policy: str = "",
    **settings: str,
) -> AsyncIterator[Device]:
    """The constellation with the relay's link serving ``home`` (``settings``: the relay's;
    ``extra_policy``: more rules for the broker)."""
    policy(sockdir, extra_policy)
    echo = Echo()
    relay = DeviceRelay(
        sockdir,
        link_sessions=SESSION,
        link_backoff_max="1",
        # Five intents at once per person, then one per 100 s: the flood test counts exactly.
        link_intent_rate="0.01",
        link_intent_burst="5",
        **settings,
    )
    dev = Device(sockdir, spawn_service, echo, relay, broker_env=broker_env or {})
    dev.start_broker()
    dev.start_a11y()
    tools = asyncio.create_task(echo.provider(sockdir / "tools.sock").keep_registered())

    async def on_action(request: wire.ActionRequest) -> str:
        dev.pressed.append((request.node_id, request.action))
        return "saved"

    async with A11yPublisher(sockdir / "a11y.sock", label="Editor", on_action=on_action) as app:
        await app.publish(form_tree(), root_id=1)
        dev.app = app
        await asyncio.to_thread(relay.start)
        try:
            yield dev
        finally:
            for client in dev.clients:
                await client.close()
            tools.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tools
            await asyncio.to_thread(relay.close)
            dev.stop(dev.a11y)
            dev.stop(dev.broker)
            show_logs(sockdir)


@pytest.fixture
async def home(sockdir: Path, spawn_service: Any) -> AsyncIterator[Device]:
    async with device(sockdir, spawn_service) as dev:
        yield dev


# -- state ------------------------------------------------------------------------------------


async def test_the_devices_state_appears_in_a_clients_document(home: Device) -> None:
    watcher = await home.join("observer", sub="bob")
    await app_screen(watcher, lambda apps: {"Editor", "Save", "Title"} <= names(apps))
    await ready(watcher)
    await eventually(
        lambda: not {"screen", "tools", "calls"} & set(state(watcher)["stale"]), about=watcher
    )
    device = state(watcher)
    assert "updatedAt" in device
    (app,) = device["screen"]["apps"]
    assert app["appId"]
    assert app["treeId"] >= 0
    # Document order, with each node's place: window > form > (field, wrapper > buttons).
    place = {n["name"]: (n["depth"], n["parent"]) for n in app["nodes"] if "name" in n}
    assert [n["id"] for n in app["nodes"]] == [1, 2, 3, 4, 5, 6]
    assert place["Editor"] == (0, None)
    assert place["Title"] == (2, 2)
    assert place["Save"] == (3, 4)
    save = next(n for n in app["nodes"] if n.get("name") == "Save")
    assert save["ref"] == f"{int(app['treeId'])}:5"  # pycrdt reads numbers as floats
    assert "press" in save["actions"]
    # No D-Bus gateway and no sensors here: those say so.
    assert {"nowPlaying", "notifications", "sensors"} <= set(device["stale"])


async def test_changes_on_the_screen_reach_the_document(sockdir: Path, home: Device) -> None:
    watcher = await home.join("observer", sub="bob")
    await app_screen(watcher, lambda apps: "Save" in names(apps))
    assert home.app is not None
    title = wire.Node(3, wire.ROLES["textField"], "Title", value="final")
    await home.app.publish([title])
    await app_screen(watcher, lambda apps: "final" in values(apps))
    async with A11yPublisher(sockdir / "a11y.sock", label="Notes") as notes:
        await notes.publish([wire.Node(1, wire.ROLES["window"], "Notes", children=())], root_id=1)
        await app_screen(watcher, lambda apps: {"Notes", "Save"} <= names(apps))
    await app_screen(
        watcher, lambda apps: names(apps) == {"Editor", "Form", "Title", "Save", "Cancel"}
    )


# -- intents ----------------------------------------------------------------------------------


async def test_an_intent_runs_once_for_its_person(home: Device) -> None:
    alice = await home.join()
    await ready(alice)
    key = ask(alice, ECHO, {"text": "hello"})
    answer = await final(alice, key)
    assert answer["status"] == "ok", answer
    assert answer["output"]["text"] == "hello"
    assert home.echo.runs == ["hello"]
    # The broker decided and audited it for alice, through the relay.
    line = next(e for e in home.audit() if e["tool"] == ECHO)
    assert line["onBehalfOf"] == {"subject": "alice", "session": SESSION}
    await eventually(
        lambda: any(
            c.get("onBehalfOf", {}).get("subject") == "alice" for c in state(alice)["calls"]
        )
    )
    # The same intent again (a client resending its update after a reconnect) runs nothing.
    # Then a new intent on the same connection: answered after the resent one was seen.
    again = await home.join()
    await again.send(create_update_message(alice.doc.get_update()))
    await final(again, ask(again, ECHO, {"text": "next"}))
    assert home.echo.runs == ["hello", "next"]
    assert results(again)[key] == answer


async def test_an_intent_calls_a_tool_the_relay_itself_may_not(
    sockdir: Path, spawn_service: Any
) -> None:
    """``tools`` is what the device offers sessions (every registered tool), not what the
    broker lets the relay call as itself: the broker decides for the person, at the call."""
    deny = f'\n[[deny]]\nprincipals = ["uid:{os.getuid()}"]\ntools = ["{ECHO}"]\n'
    async with device(sockdir, spawn_service, extra_policy=deny) as dev:
        alice = await dev.join()
        await ready(alice)
        answer = await final(alice, ask(alice, ECHO, {"text": "for alice"}))
        assert answer["status"] == "ok", answer
        assert dev.echo.runs == ["for alice"]
        # A tool no provider registered is still refused without a call.
        unknown = await final(alice, ask(alice, "dev.kiki.demo.nothing", {}))
        assert unknown["status"] == "refused"
        assert unknown["error"]["name"] == "NotFound"


async def test_an_intent_acts_on_the_screen_by_its_ref(home: Device) -> None:
    alice = await home.join()
    await ready(alice)
    (app,) = state(alice)["screen"]["apps"]
    save = next(n for n in app["nodes"] if n.get("name") == "Save")
    answer = await final(
        alice, ask(alice, "dev.kiki.a11y.act", {"ref": save["ref"], "action": "press"})
    )
    assert answer["status"] == "ok", answer
    assert home.pressed == [(5, wire.ACTIONS["press"])]


async def test_an_intent_running_when_the_relay_died_is_answered_not_run_again(
    home: Device,
) -> None:
    alice = await home.join()
    await ready(alice)
    key = ask(alice, ECHO, {"text": "hold"})
    await eventually(
        lambda: results(alice).get(key, {}).get("status") == "running", WAIT, about=alice
    )
    await eventually(lambda: home.echo.runs == ["hold"], WAIT)
    # The relay freezes mid-call; the tool finishes and the broker records its answer (its
    # audit line is written before the answer goes out); then the relay dies without it.
    assert home.relay.proc is not None
    home.relay.proc.send_signal(signal.SIGSTOP)
    try:
        home.echo.release.set()
        await eventually(lambda: any(e["tool"] == ECHO for e in home.audit()), WAIT)
    finally:
        home.relay.proc.send_signal(signal.SIGKILL)
        home.relay.proc.send_signal(signal.SIGCONT)
    await alice.close()
    await asyncio.to_thread(home.relay.stop)
    await asyncio.to_thread(home.relay.start)
    after = await home.join()
    answer = await final(after, key)
    assert answer["status"] == "ok", answer
    assert answer["output"]["text"] == "hold"
    assert home.echo.runs == ["hold"]  # once: the broker answered the retry from its record
    assert [e["outcome"] for e in home.audit() if e["tool"] == ECHO] == ["ok", "replay"]


async def test_refused_and_expired_intents_are_answered_with_nothing_run(home: Device) -> None:
    alice = await home.join()
    await ready(alice)
    past = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    cases = {
        "unknown tool": (ask(alice, "dev.kiki.demo.nothing", {}), "refused", "NotFound"),
        "invalid arguments": (ask(alice, ECHO, {"words": 1}), "refused", "ValidationError"),
        "expired": (ask(alice, ECHO, {"text": "late"}, deadline=past), "expired", "Timeout"),
        # Listed for the session, but the broker's policy gives remote people none of it.
        "policy": (ask(alice, "dev.kiki.a11y.snapshot", {}), "refused", "PermissionDenied"),
    }
    for what, (key, status, name) in cases.items():
        answer = await final(alice, key)
        assert (answer["status"], answer["error"]["name"]) == (status, name), what
    assert home.echo.runs == []


async def test_a_flood_of_intents_is_rate_limited_and_told(home: Device) -> None:
    alice = await home.join()
    await ready(alice)
    keys = [ask(alice, ECHO, {"text": f"n{i}"}) for i in range(30)]
    answers = [await final(alice, key) for key in keys]
    ran = [a for a in answers if a["status"] == "ok"]
    limited = [a for a in answers if a["status"] == "refused"]
    assert len(ran) + len(limited) == 30
    assert len(ran) == 5  # the burst
    assert {a["error"]["name"] for a in limited} == {"LimitExceeded"}
    assert len(home.echo.runs) == len(ran)
    # Another person is not held to alice's rate.
    carol = await home.join(sub="carol")
    answer = await final(carol, ask(carol, ECHO, {"text": "mine"}, by="carol"))
    assert answer["status"] == "ok"


async def test_observers_and_controllers_cannot_forge_intents_or_state(home: Device) -> None:
    watcher = await home.join("observer", sub="bob")
    await ready(watcher)
    observer = await home.join("observer", sub="bob")
    ask(observer, ECHO, {"text": "from an observer"}, by="bob")
    assert await observer.closed() == 1008
    mallory = await home.join(sub="mallory")
    ask(mallory, ECHO, {"text": "as alice"}, by="alice")
    assert await mallory.closed() == 1008
    assert mallory.close_reason == "PermissionDenied: intent by alice from a connection of mallory"
    forger = await home.join(sub="mallory")
    forger.doc.get("device", type=Map)["tools"] = ["dev.kiki.everything"]
    assert await forger.closed() == 1008
    # Nothing of it reached the document or the tool.
    alice = await home.join()
    answer = await final(alice, ask(alice, ECHO, {"text": "after"}))
    assert answer["status"] == "ok"
    assert home.echo.runs == ["after"]
    assert ECHO in state(alice)["tools"]
    assert len(alice.doc.get("intents", type=Map)) == 1


async def test_finished_intents_are_pruned(sockdir: Path, spawn_service: Any) -> None:
    async with device(sockdir, spawn_service, link_keep="1", link_prune_every="0.5") as dev:
        alice = await dev.join()
        await ready(alice)
        key = ask(alice, ECHO, {"text": "short-lived"})
        await final(alice, key)
        await eventually(lambda: key not in results(alice), WAIT, about=alice)
        assert key not in alice.doc.get("intents", type=Map)
        # Written again after it was pruned, it is refused, not run again.
        entry = intent(ECHO, {"text": "short-lived"})
        entry["id"] = key
        again = await dev.join()
        again.doc.get("intents", type=Map)[key] = entry
        answer = await final(again, key)
        assert (answer["status"], answer["error"]["name"]) == ("refused", "Conflict")
        assert dev.echo.runs == ["short-lived"]


async def test_an_intent_pruned_then_written_again_after_a_restart_does_not_run(
    sockdir: Path, spawn_service: Any
) -> None:
    """The link remembers the ids it pruned only while it runs; after a restart an intent
    written again is older than link_intent_max_age, which is kept below the broker's
    idempotency window, so it is expired, not run (here past that window too: the broker
    would run it again)."""
    settings = {"link_keep": "1", "link_prune_every": "0.5", "link_intent_max_age": "2"}
    window = 4.0
    broker_env = {"KIKI_TOOL_BROKER_IDEMPOTENCY_WINDOW": f"{window:g}"}
    async with device(sockdir, spawn_service, broker_env, **settings) as dev:
        alice = await dev.join()
        await ready(alice)
        entry = intent(ECHO, {"text": "once"})
        key = entry["id"]
        alice.doc.get("intents", type=Map)[key] = entry
        assert (await final(alice, key))["status"] == "ok"
        await eventually(lambda: key not in results(alice), WAIT, about=alice)
        await alice.close()
        await asyncio.to_thread(dev.relay.stop)
        await asyncio.to_thread(dev.relay.start)
        # Past the broker's window from the call (which came after createdAt).
        written = datetime.fromisoformat(entry["createdAt"])
        await asyncio.sleep(max(0.0, window + 1 - (datetime.now(UTC) - written).total_seconds()))
        again = await dev.join()
        await ready(again)
        again.doc.get("intents", type=Map)[key] = entry
        answer = await final(again, key)
        assert (answer["status"], answer["error"]["name"]) == ("expired", "Timeout"), answer
        assert dev.echo.runs == ["once"]


async def test_an_intent_deleted_by_another_device_writer_is_not_run_again(home: Device) -> None:
    alice = await home.join()
    await ready(alice)
    entry = intent(ECHO, {"text": "mine"})
    key = entry["id"]
    alice.doc.get("intents", type=Map)[key] = entry
    assert (await final(alice, key))["status"] == "ok"
    owner = await home.join("device", sub="device:edge")  # the edge's link, say, pruning
    with owner.doc.transaction():
        del owner.doc.get("intents", type=Map)[key]
        del owner.doc.get("results", type=Map)[key]
    await eventually(lambda: key not in results(alice), WAIT, about=alice)
    owner.doc.get("intents", type=Map)[key] = entry
    answer = await final(alice, key)
    assert (answer["status"], answer["error"]["name"]) == ("refused", "Conflict"), answer
    assert home.echo.runs == ["mine"]


async def test_an_intent_running_when_the_relay_died_long_ago_is_not_called_again(
    sockdir: Path, spawn_service: Any
) -> None:
    """Past link_intent_max_age the broker may have forgotten the key: whether it ran is not
    known, and it is not called again."""
    async with device(sockdir, spawn_service, link_intent_max_age="2") as dev:
        alice = await dev.join()
        await ready(alice)
        entry = intent(ECHO, {"text": "hold"})
        key = entry["id"]
        alice.doc.get("intents", type=Map)[key] = entry
        await eventually(lambda: dev.echo.runs == ["hold"], WAIT)
        await eventually(
            lambda: results(alice).get(key, {}).get("status") == "running", WAIT, about=alice
        )
        await alice.close()
        await asyncio.to_thread(dev.relay.stop, kill=True)
        written = datetime.fromisoformat(entry["createdAt"])
        await asyncio.sleep(max(0.0, 3 - (datetime.now(UTC) - written).total_seconds()))
        await asyncio.to_thread(dev.relay.start)
        after = await dev.join()
        answer = await final(after, key)
        dev.echo.release.set()
        assert (answer["status"], answer["error"]["name"]) == ("error", "Unavailable"), answer
        assert dev.echo.runs == ["hold"]


# Writes one intent from a stock y-websocket client (Yjs in Node) and prints its final result.
JS_INTENT = """
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
const { base, room, token, intent } = JSON.parse(process.env.KIKI_TEST_INTENT)
const doc = new Y.Doc()
const provider = new WebsocketProvider(base, room, doc, {
  WebSocketPolyfill: WebSocket, params: { token }, disableBc: true
})
const results = doc.getMap('results')
const done = () => {
  const result = results.get(intent.id)
  if (result && result.status !== 'running') {
    process.stdout.write(JSON.stringify(result) + '\\n')
    provider.destroy()
    process.exit(0)
  }
}
provider.on('sync', (synced) => {
  if (!synced || doc.getMap('intents').has(intent.id)) return
  doc.getMap('intents').set(intent.id, intent)
  results.observe(done)
  done()
})
"""


async def test_an_integer_argument_from_a_javascript_client_reaches_the_tool(
    home: Device,
) -> None:
    """Yjs in Node writes 5 as an integer; pycrdt reads it as 5.0: the tool gets 5."""
    alice = await home.join()
    await ready(alice)
    await eventually(lambda: CLOSE in state(alice)["tools"], about=alice)
    entry = intent(CLOSE, {"id": 5})
    spec = {
        "base": f"ws://127.0.0.1:{home.relay.port}/session",
        "room": SESSION,
        "token": home.relay.token(SESSION, "controller", sub="alice"),
        "intent": entry,
    }
    proc = await asyncio.create_subprocess_exec(
        "node",
        "--input-type=module",
        "-e",
        JS_INTENT,
        cwd=NODE_DIR,
        env={**os.environ, "KIKI_TEST_INTENT": json.dumps(spec)},
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(WAIT):
            out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    answer = json.loads(out)
    assert answer["status"] == "ok", answer
    assert home.echo.closed == [5]
    assert type(home.echo.closed[0]) is int


# -- faults -----------------------------------------------------------------------------------


async def test_losing_the_broker_marks_everything_stale_until_it_is_back(home: Device) -> None:
    watcher = await home.join("observer", sub="bob")
    await app_screen(watcher, lambda apps: "Save" in names(apps))
    await eventually(
        lambda: not {"screen", "tools", "calls"} & set(state(watcher)["stale"]), about=watcher
    )
    assert (await show(home.sockdir))["broker"]["connected"] is True
    home.stop(home.broker)
    await eventually(
        lambda: {"screen", "tools", "calls"} <= set(state(watcher)["stale"]), WAIT, about=watcher
    )
    assert "Save" in names(state(watcher)["screen"]["apps"])  # the last value is kept
    link = await show(home.sockdir)  # kiki session show
    assert link["linked"] is True
    assert link["broker"]["connected"] is False
    assert "tools" in link["stale"]
    home.start_broker()
    await eventually(
        lambda: not {"screen", "tools", "calls"} & set(state(watcher)["stale"]), WAIT, about=watcher
    )
    # The a11y-server registered its stream again; the screen is told whole once more.
    await app_screen(watcher, lambda apps: "Save" in names(apps))
    alice = await home.join()
    await ready(alice)
    answer = await final(alice, ask(alice, ECHO, {"text": "back"}))
    assert answer["status"] == "ok"


async def test_losing_the_a11y_server_marks_the_screen_stale_until_it_is_back(
    sockdir: Path, home: Device
) -> None:
    watcher = await home.join("observer", sub="bob")
    await app_screen(watcher, lambda apps: "Save" in names(apps))
    await eventually(lambda: "screen" not in state(watcher)["stale"], WAIT, about=watcher)
    home.stop(home.a11y)
    await eventually(lambda: "screen" in state(watcher)["stale"], WAIT, about=watcher)
    assert "tools" not in state(watcher)["stale"]
    home.start_a11y()
    await eventually(lambda: "screen" not in state(watcher)["stale"], WAIT, about=watcher)
    async with A11yPublisher(sockdir / "a11y.sock", label="Again") as app:
        await app.publish([wire.Node(1, wire.ROLES["window"], "Again", children=())], root_id=1)
        await app_screen(watcher, lambda apps: names(apps) == {"Again"})


async def test_the_sensors_latest_samples_reach_the_document(
    home: Device, start_publisher: Callable[..., Any]
) -> None:
    watcher = await home.join("observer", sub="bob")
    await ready(watcher)
    assert "sensors" in state(watcher)["stale"]  # no publisher yet
    await asyncio.to_thread(start_publisher, broker_tools="true")

    def read() -> bool:
        sensors = state(watcher).get("sensors", [])
        return bool(sensors) and "sensors" not in state(watcher)["stale"]

    await eventually(read, about=watcher)
    sensors = state(watcher)["sensors"]
    assert len(sensors) <= 16
    assert all(s["sensor"] and s["values"] and "scale" in s for s in sensors)
    first = {s["sensor"]: s.get("seq") for s in sensors}
    await eventually(  # read again each second
        lambda: any(s.get("seq") != first.get(s["sensor"]) for s in state(watcher)["sensors"]),
        about=watcher,
    )
