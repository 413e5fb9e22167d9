"""``SessionClient`` against a real ``kiki-sync-relay`` process. The test plays the device: a
pycrdt client holding a ``device`` token writes the device's state and answers intents."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Map

from kikitest.sync_fixtures import DeviceRelay, YClient, eventually
from libkiki.errors import (
    Conflict,
    FrameTooLarge,
    InvalidParams,
    LimitExceeded,
    NotFound,
    PeerGone,
    PermissionDenied,
    Timeout,
    ToolError,
    Unavailable,
)
from libkiki.session import SessionClient

pytestmark = pytest.mark.integration

Answer = Callable[[dict[str, Any]], dict[str, Any] | None]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def echo(intent: dict[str, Any]) -> dict[str, Any] | None:
    """The device's answer: echo's output, a tool error, a refusal, an expiry, or silence."""
    tool, input = intent["tool"], intent.get("input") or {}
    if tool == "dev.kiki.demo.echo":
        return {"status": "ok", "output": {"echo": input, "by": intent["by"]}}
    if tool == "dev.kiki.demo.fail":
        return {"status": "error", "error": {"name": "ToolError", "message": "it broke"}}
    if tool == "dev.kiki.demo.forbidden":
        return {"status": "refused", "error": {"name": "PermissionDenied", "message": "policy"}}
    if "deadline" in intent:
        return {"status": "expired"}
    if tool == "dev.kiki.demo.silent":
        return None
    return {"status": "refused", "error": {"name": "NotFound", "message": f"no tool {tool}"}}


class Device:
    """The device's end of the session: writes ``device`` and answers each new intent."""

    def __init__(self, client: YClient, answer: Answer = echo) -> None:
        self.client = client
        self.answer = answer
        self.state = client.doc.get("device", type=Map)
        self.intents = client.doc.get("intents", type=Map)
        self.results = client.doc.get("results", type=Map)
        self.seen: asyncio.Queue[str] = asyncio.Queue()
        self.intents.observe(self._added)

    def _added(self, event: Any) -> None:
        # Written from a task: a pycrdt document takes no write inside its own observer.
        for key, change in event.keys.items():
            if change["action"] == "add":
                self.seen.put_nowait(key)

    async def serve(self) -> None:
        while True:
            key = await self.seen.get()
            self.results[key] = {"status": "running", "at": now()}
            await asyncio.sleep(0)
            result = self.answer(self.intents[key])
            if result is not None:
                self.results[key] = {**result, "at": now()}


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceRelay]:
    relay = DeviceRelay(Path(tmp_path_factory.mktemp("relay")))
    relay.start()
    yield relay
    relay.close()


_names = iter(range(10**6))


@pytest.fixture
def session() -> str:
    return f"remote{next(_names)}"


@pytest.fixture
async def device(relay: DeviceRelay, session: str) -> AsyncIterator[Device]:
    client = await YClient.join(relay.url(session, relay.token(session, "device", sub="device")))
    device = Device(client)
    device.state["tools"] = ["dev.kiki.demo.echo"]
    device.state["updatedAt"] = now()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(device.serve())
        yield device
        task.cancel()
    await client.close()


def controller(relay: DeviceRelay, session: str, sub: str = "alice") -> str:
    return relay.url(session, relay.token(session, "controller", sub=sub))


async def test_state_is_the_device_map_as_plain_json(
    relay: DeviceRelay, session: str, device: Device
) -> None:
    device.state["sensors"] = [{"value": 3}]
    async with SessionClient(controller(relay, session)) as remote:
        await eventually(lambda: "sensors" in remote.state())
        state = remote.state()
        assert state["tools"] == ["dev.kiki.demo.echo"]
        assert state["sensors"] == [{"value": 3}]
        assert type(state["sensors"][0]["value"]) is int  # pycrdt reads every number as a float
        assert remote.sub == "alice"


async def test_a_call_returns_the_devices_output(
    relay: DeviceRelay, session: str, device: Device
) -> None:
    async with SessionClient(controller(relay, session)) as remote:
        out = await remote.call("dev.kiki.demo.echo", {"n": 1, "s": "x"}, timeout=10)
        assert out == {"echo": {"n": 1, "s": "x"}, "by": "alice"}
        (key,) = device.intents.keys()
        intent = device.intents[key]
        assert intent["by"] == "alice"
        assert len(key) == 32
        assert intent["id"] == key
        assert remote.result(key) is not None
        # An input the relay would refuse (its max_message) is refused here, the connection kept.
        with pytest.raises(FrameTooLarge):
            await remote.call("dev.kiki.demo.echo", {"s": "x" * (2 << 20)}, timeout=10)
        assert await remote.call("dev.kiki.demo.echo", {}, timeout=10) == {
            "echo": {},
            "by": "alice",
        }
        # Concurrent calls each get their own result.
        outs = await asyncio.gather(
            *(remote.call("dev.kiki.demo.echo", {"i": i}, timeout=10) for i in range(5))
        )
        assert [o["echo"]["i"] for o in outs] == list(range(5))
        assert len(device.intents) == 7


@pytest.mark.parametrize(
    ("tool", "cls", "message"),
    [
        ("dev.kiki.demo.fail", ToolError, "it broke"),
        ("dev.kiki.demo.forbidden", PermissionDenied, "policy"),
        ("dev.kiki.demo.unknown", NotFound, "no tool dev.kiki.demo.unknown"),
    ],
)
async def test_a_failed_call_raises_what_the_result_names(
    relay: DeviceRelay, session: str, device: Device, tool: str, cls: type[Exception], message: str
) -> None:
    async with SessionClient(controller(relay, session)) as remote:
        with pytest.raises(cls, match=message):
            await remote.call(tool, {}, timeout=10)


async def test_an_expired_intent_raises_timeout_and_carries_its_deadline(
    relay: DeviceRelay, session: str, device: Device
) -> None:
    deadline = datetime.now(UTC) - timedelta(seconds=1)
    async with SessionClient(controller(relay, session)) as remote:
        with pytest.raises(Timeout, match="expired"):
            await remote.call("dev.kiki.demo.late", {}, timeout=10, deadline=deadline)
    (intent,) = device.intents.values()
    assert intent["deadline"].endswith("Z")


async def test_no_result_in_time_is_a_timeout_naming_the_intent(
    relay: DeviceRelay, session: str, device: Device
) -> None:
    async with SessionClient(controller(relay, session)) as remote:
        with pytest.raises(Timeout, match=r"within 0\.2 s"):
            await remote.call("dev.kiki.demo.silent", {}, timeout=0.2)
        # The device saw it and said it is running: that is not an answer.
        (key,) = device.intents.keys()
        await eventually(lambda: remote.result(key) is not None)
        assert remote.result(key) == {"status": "running", "at": device.results[key]["at"]}


async def test_a_retry_with_the_same_id_waits_for_the_same_intent(
    relay: DeviceRelay, session: str, device: Device
) -> None:
    async with SessionClient(controller(relay, session)) as remote:
        first = await remote.call("dev.kiki.demo.echo", {"a": 1}, timeout=10, intent_id="again")
    async with SessionClient(controller(relay, session)) as remote:
        second = await remote.call("dev.kiki.demo.echo", {"a": 2}, timeout=10, intent_id="again")
    assert first == second == {"echo": {"a": 1}, "by": "alice"}
    assert list(device.intents.keys()) == ["again"]


async def test_the_token_may_come_apart_from_the_url(
    relay: DeviceRelay, session: str, device: Device
) -> None:
    url = relay.url(session, None)
    token = relay.token(session, "controller", sub="bob")
    async with SessionClient(url, token) as remote:
        assert await remote.call("dev.kiki.demo.echo", {}, timeout=10) == {"echo": {}, "by": "bob"}
    with pytest.raises(InvalidParams, match="give one"):
        SessionClient(controller(relay, session), token)
    with pytest.raises(InvalidParams, match="no token"):
        SessionClient(url)
    with pytest.raises(InvalidParams, match="not a JWT"):
        SessionClient(url, "not-a-token")
    with pytest.raises(InvalidParams, match="ws://"):
        SessionClient(f"http://127.0.0.1:{relay.port}/session/{session}", token)


async def test_an_observer_reads_and_cannot_call(
    relay: DeviceRelay, session: str, device: Device
) -> None:
    url = relay.url(session, relay.token(session, "observer", sub="eve"))
    async with SessionClient(url) as remote:
        assert remote.state()["tools"] == ["dev.kiki.demo.echo"]
        with pytest.raises(PermissionDenied, match="role observer cannot send intents"):
            await remote.call("dev.kiki.demo.echo", {}, timeout=1)
        # Joined and reading still: nothing was sent.
        device.state["stale"] = ["screen"]
        await eventually(lambda: remote.state().get("stale") == ["screen"])
    assert len(device.intents) == 0


async def test_changes_yield_each_key_as_it_changes(
    relay: DeviceRelay, session: str, device: Device
) -> None:
    async with SessionClient(controller(relay, session)) as remote:
        changes = remote.changes()
        device.state["nowPlaying"] = {"title": "a"}
        device.state["nowPlaying"] = {"title": "b"}
        del device.state["tools"]
        seen: dict[str, Any] = {}
        async with asyncio.timeout(10):
            async for key, value in changes:
                seen[key] = value
                if seen == {"nowPlaying": {"title": "b"}, "tools": None}:
                    break
        device.state["count"] = 5
        async with asyncio.timeout(10):
            key, value = await anext(changes)
        assert (key, value, type(value)) == ("count", 5, int)
        assert type(remote.state()["count"]) is int
        changes.close()
        assert [c async for c in changes] == []


async def test_a_reader_behind_gets_the_latest_value_once_and_is_bounded(
    relay: DeviceRelay, session: str, device: Device
) -> None:
    async with SessionClient(controller(relay, session), max_changes=3) as remote:
        changes = remote.changes()
        for i in range(10):
            device.state["updatedAt"] = f"t{i}"
        await eventually(lambda: remote.state()["updatedAt"] == "t9")
        assert await anext(changes) == ("updatedAt", "t9")
        behind, keeping_up = remote.changes(), remote.changes()
        for key in ("a", "b", "c", "d"):
            device.state[key] = 1
            async with asyncio.timeout(10):
                assert await anext(keeping_up) == (key, 1)
        with pytest.raises(LimitExceeded, match="3 keys behind"):
            await anext(behind)


async def test_a_revoked_token_ends_calls_and_changes_with_permission_denied(
    relay: DeviceRelay, session: str, device: Device
) -> None:
    import jwt

    token = relay.token(session, "controller", sub="mallory")
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    device.answer = lambda intent: None
    async with SessionClient(relay.url(session, token)) as remote:
        changes = remote.changes()
        call = asyncio.ensure_future(remote.call("dev.kiki.demo.echo", {}, timeout=20))
        await eventually(lambda: len(device.intents) == 1)
        await relay.revoke(session, jti)
        with pytest.raises(PermissionDenied, match="revoked"):
            await call
        with pytest.raises(PermissionDenied, match="revoked"):
            await anext(changes)
        with pytest.raises(PermissionDenied, match="revoked"):
            await remote.call("dev.kiki.demo.echo", {}, timeout=1)
        assert isinstance(remote.error, PermissionDenied)


async def test_joining_is_refused_with_a_typed_error(relay: DeviceRelay, session: str) -> None:
    other = relay.token("another", "controller")
    with pytest.raises(PermissionDenied):
        async with SessionClient(relay.url(session, other)):
            pass
    expired = relay.token(session, "controller", ttl=-120)
    with pytest.raises(PermissionDenied, match="expired"):
        async with SessionClient(relay.url(session, expired)):
            pass
    with pytest.raises(NotFound, match="404"):
        async with SessionClient(relay.url("bad!name", relay.token(session, "controller"))):
            pass
    with pytest.raises(InvalidParams, match="400"):
        async with SessionClient(relay.url("bad name", relay.token(session, "controller"))):
            pass


async def test_an_unreachable_relay_is_unavailable() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"ws://127.0.0.1:{port}/session/x"
    with pytest.raises(Unavailable, match=f"cannot reach ws://127.0.0.1:{port}/session/x"):
        async with SessionClient(url, _any_token()):
            pass


def _any_token() -> str:
    import jwt

    return jwt.encode({"sub": "x", "role": "controller"}, "k" * 32, algorithm="HS256")


async def test_the_relay_stopping_ends_a_waiting_call_with_peer_gone(
    tmp_path: Path,
) -> None:
    relay = DeviceRelay(tmp_path)
    relay.start()
    try:
        session = "stopping"
        async with SessionClient(controller(relay, session)) as remote:
            call = asyncio.ensure_future(remote.call("dev.kiki.demo.echo", {}, timeout=20))
            await asyncio.sleep(0)
            await asyncio.to_thread(relay.stop)
            with pytest.raises(PeerGone):
                await call
    finally:
        relay.close()


async def test_presence_is_seen_by_the_others(relay: DeviceRelay, session: str) -> None:
    async with (
        SessionClient(controller(relay, session, "alice")) as alice,
        SessionClient(controller(relay, session, "bob")) as bob,
    ):
        await alice.set_presence({"name": "alice"})
        await eventually(lambda: {"name": "alice"} in bob.peers().values())
    async with SessionClient(controller(relay, session, "carol")) as carol:
        # alice withdrew hers as she left
        with contextlib.suppress(TimeoutError):
            await eventually(lambda: bool(carol.peers()), within=0.5)
        assert {"name": "alice"} not in carol.peers().values()


async def test_a_second_call_waiting_for_the_same_intent_is_a_conflict(
    relay: DeviceRelay, session: str, device: Device
) -> None:
    async with SessionClient(controller(relay, session)) as remote:
        first = asyncio.create_task(
            remote.call("dev.kiki.demo.silent", {}, timeout=10, intent_id="twice")
        )
        await eventually(lambda: "twice" in device.intents)
        with pytest.raises(Conflict, match="waits for intent twice already"):
            await remote.call("dev.kiki.demo.silent", {}, timeout=10, intent_id="twice")
        # The first call still waits for its result, and gets it.
        device.results["twice"] = {"status": "ok", "output": {"done": True}, "at": now()}
        assert await first == {"done": True}


async def test_a_relay_that_stops_reading_holds_a_call_no_longer_than_its_timeout() -> None:
    from pycrdt import Doc, create_sync_message
    from websockets.asyncio.server import ServerConnection, serve

    release = asyncio.Event()

    async def stalled(ws: ServerConnection) -> None:
        # Syncs the client (its step 1, then a step 2 of an empty document), then reads nothing
        # more off the socket until the test is done.
        await ws.send(create_sync_message(Doc()))
        await ws.send(bytes([0, 1, 2, 0, 0]))
        ws.transport.pause_reading()
        await release.wait()
        ws.transport.abort()

    async with serve(stalled, "127.0.0.1", 0, max_size=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        url = f"ws://127.0.0.1:{port}/session/s?token={_any_token()}"
        async with SessionClient(url, max_input=64 << 20) as remote:
            # More than the sockets' buffers hold: the send waits on the relay reading.
            big = {"blob": "x" * (32 << 20)}
            try:
                async with asyncio.timeout(30):  # the guard: without the fix it waits for ever
                    with pytest.raises(Timeout, match=r"within 0\.5 s"):
                        await remote.call("dev.kiki.demo.echo", big, timeout=0.5)
            finally:
                release.set()
