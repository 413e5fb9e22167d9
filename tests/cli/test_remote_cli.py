"""``kiki remote`` against a real ``kiki-sync-relay``: mostly with the test playing the device
(a pycrdt client with a ``device`` token writing the state and answering intents), and once
with the relay's own device link and a real broker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Map

from kikitest import VENV_BIN, until
from kikitest.sync_fixtures import DeviceRelay, YClient
from libkiki.tools import ToolCall, ToolProvider

pytestmark = pytest.mark.integration


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Device:
    """Answers each new intent: echo's input back, a refusal for anything else."""

    def __init__(self, client: YClient) -> None:
        self.client = client
        self.state = client.doc.get("device", type=Map)
        self.intents = client.doc.get("intents", type=Map)
        self.results = client.doc.get("results", type=Map)
        self.seen: asyncio.Queue[str] = asyncio.Queue()
        self.intents.observe(self._added)

    def _added(self, event: Any) -> None:
        # Answered from a task: a pycrdt document takes no write inside its own observer.
        for key, change in event.keys.items():
            if change["action"] == "add":
                self.seen.put_nowait(key)

    async def serve(self) -> None:
        while True:
            key = await self.seen.get()
            intent = self.intents[key]
            if intent["tool"] == "dev.kiki.demo.echo":
                result = {"status": "ok", "output": {"echo": intent["input"], "by": intent["by"]}}
            else:
                error = {"name": "PermissionDenied", "message": f"{intent['by']} may not"}
                result = {"status": "refused", "error": error}
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
    return f"cli{next(_names)}"


@pytest.fixture
async def device(relay: DeviceRelay, session: str) -> AsyncIterator[Device]:
    client = await YClient.join(relay.url(session, relay.token(session, "device", sub="device")))
    device = Device(client)
    device.state["tools"] = ["dev.kiki.demo.echo"]
    device.state["nowPlaying"] = {
        "player": {"player": "demo", "status": "Playing"},
        "track": {"title": "Song", "artists": ["Band", "Guest"]},
    }
    device.state["screen"] = {"apps": [{"appId": "demo", "nodes": [{"id": 1}, {"id": 2}]}]}
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(device.serve())
        yield device
        task.cancel()
    await client.close()


async def kiki(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``kiki remote ARGS`` run to its end, while this loop goes on serving the device."""
    proc = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "kiki"),
        "remote",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "KIKI_SESSION_TOKEN"} | (env or {}),
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def url(relay: DeviceRelay, session: str, role: str = "controller", sub: str = "alice") -> str:
    return relay.url(session, relay.token(session, role, sub=sub))


async def test_state_prints_the_devices_state(
    relay: DeviceRelay, session: str, device: Device
) -> None:
    code, out, err = await kiki("state", url(relay, session, "observer"), "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)["tools"] == ["dev.kiki.demo.echo"]
    code, out, _ = await kiki("state", url(relay, session, "observer"))
    assert code == 0
    assert out.splitlines() == [
        "nowPlaying: Band, Guest - Song (Playing)",
        "screen: demo (2 nodes)",
        'tools: 1, the last "dev.kiki.demo.echo"',
    ]


async def test_call_prints_the_output_and_the_device_sees_who_asked(
    relay: DeviceRelay, session: str, device: Device
) -> None:
    code, out, err = await kiki("call", url(relay, session), "dev.kiki.demo.echo", '{"n": 2}')
    assert (code, err) == (0, "")
    assert json.loads(out) == {"echo": {"n": 2}, "by": "alice"}
    code, out, _ = await kiki(
        "call", url(relay, session), "dev.kiki.demo.echo", "--json", "--deadline", "60"
    )
    assert (code, out) == (0, '{"by":"alice","echo":{}}\n')
    assert all("deadline" in i for i in device.intents.values() if i["input"] == {})


async def test_a_call_again_with_its_id_is_not_run_again(
    relay: DeviceRelay, session: str, device: Device
) -> None:
    args = ("call", url(relay, session), "dev.kiki.demo.echo", '{"n": 1}', "--id", "same-one")
    first = await kiki(*args)
    again = await kiki(*args[:3], '{"n": 2}', *args[4:])
    assert first == again == (0, '{\n  "by": "alice",\n  "echo": {\n    "n": 1\n  }\n}\n', "")
    assert list(device.intents.keys()) == ["same-one"]
    code, _, err = await kiki(*args[:4], "--id", "no spaces")
    assert (code, err) == (
        1,
        "kiki remote: dev.kiki.demo.echo: InvalidParams: an intent id is "
        "1-64 of [A-Za-z0-9_-], not 'no spaces'\n",
    )


async def test_a_refused_call_says_why_and_fails(
    relay: DeviceRelay, session: str, device: Device
) -> None:
    code, out, err = await kiki("call", url(relay, session, sub="bob"), "dev.kiki.os.reboot")
    assert (code, out) == (1, "")
    assert err == "kiki remote: dev.kiki.os.reboot: PermissionDenied: bob may not\n"


async def test_the_token_may_come_apart_from_the_url(
    relay: DeviceRelay, session: str, device: Device
) -> None:
    bare = relay.url(session, None)
    token = relay.token(session, "controller", sub="carol")
    code, out, _ = await kiki("call", bare, "dev.kiki.demo.echo", "--token", token)
    assert (code, json.loads(out)["by"]) == (0, "carol")
    env = {"KIKI_SESSION_TOKEN": relay.token(session, "controller", sub="dave")}
    code, out, _ = await kiki("call", bare, "dev.kiki.demo.echo", env=env)
    assert (code, json.loads(out)["by"]) == (0, "dave")


async def test_watch_prints_the_state_then_each_change(
    relay: DeviceRelay, session: str, device: Device
) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "kiki"),
        "remote",
        "watch",
        url(relay, session, "observer"),
        "--json",
        "--count",
        "2",
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        first = [json.loads(await proc.stdout.readline()) for _ in range(3)]
        assert [line["key"] for line in first] == ["nowPlaying", "screen", "tools"]
        device.state["nowPlaying"] = None
        device.state["stale"] = ["screen"]
        rest, _ = await proc.communicate()
    assert proc.returncode == 0
    assert [json.loads(line) for line in rest.splitlines()] == [
        {"key": "nowPlaying", "value": None},
        {"key": "stale", "value": ["screen"]},
    ]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["call", "{url}", "dev.kiki.demo.echo", "{{not json"], "the input is not JSON"),
        (
            ["call", "{observer}", "dev.kiki.demo.echo"],
            "PermissionDenied: a token of role observer cannot send intents",
        ),
        (["state", "http://127.0.0.1:1/session/x?token=secret"], "not a ws:// or wss://"),
        (["state", "ws://127.0.0.1:1/session/x"], "no token for ws://127.0.0.1:1/session/x"),
        (["state", "{url}", "--token", "x"], "a token in the URL and another given apart"),
        (["state", "ws://127.0.0.1:1/session/x", "--token", "x.y.z"], "the token is not a JWT"),
        (["state", "{expired}"], "token expired"),
        (["watch", "{url}", "--count", "-1"], "--count must be 0 or more"),
    ],
)
async def test_bad_input_is_told_plainly(
    relay: DeviceRelay, session: str, device: Device, args: list[str], said: str
) -> None:
    urls = {
        "url": url(relay, session),
        "observer": url(relay, session, "observer"),
        "expired": relay.url(session, relay.token(session, "controller", ttl=-120)),
    }
    code, out, err = await kiki(*(a.format(**urls) for a in args))
    assert (code, out) == (1, "")
    assert err.startswith("kiki remote: ")
    assert said in err
    assert "secret" not in err
    assert "Traceback" not in err
    assert len(device.intents) == 0


async def test_an_unreachable_session_is_told_without_its_token(relay: DeviceRelay) -> None:
    token = relay.token("x", "controller")
    code, _, err = await kiki("state", f"ws://127.0.0.1:1/session/x?token={token}")
    assert code == 1
    assert err.startswith("kiki remote: cannot reach ws://127.0.0.1:1/session/x:")
    assert token not in err


async def test_a_closed_session_ends_watch_with_the_reason(
    relay: DeviceRelay, session: str, device: Device
) -> None:
    import jwt

    token = relay.token(session, "observer", sub="eve")
    proc = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "kiki"),
        "remote",
        "watch",
        relay.url(session, token),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        await proc.stdout.readline()
        await relay.revoke(session, jwt.decode(token, options={"verify_signature": False})["jti"])
        _, err = await proc.communicate()
    assert proc.returncode == 1
    assert err.decode() == "kiki remote: the token was revoked\n"


@pytest.fixture
async def linked(sockdir: Path, spawn_service: Any) -> AsyncIterator[DeviceRelay]:
    """The device for real: a broker trusting the relay as a delegate, a provider of
    ``dev.kiki.demo.echo`` in this process, and a relay whose device link serves ``home``."""
    etc = sockdir / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "tool-policy.toml").write_text(
        f'[[delegate]]\nprincipals = ["uid:{os.getuid()}"]\n\n'
        '[[allow]]\nprincipals = ["remote:*"]\ntools = ["dev.kiki.demo.*"]\n'
    )
    broker, notes = spawn_service("tool-broker")
    notes.wait_for("READY")
    (sockdir / "relay").mkdir()
    relay = DeviceRelay(sockdir / "relay", link_sessions="home")
    relay.env.update(KIKI_RUNTIME_DIR=str(sockdir), KIKI_CONFIG_DIR=str(etc))
    provider = ToolProvider(sockdir / "tools.sock")

    @provider.tool("dev.kiki.demo.echo")
    async def echo(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        return {"text": args["text"], "caller": call.caller}

    async with provider.connect(), asyncio.TaskGroup() as tg:
        serving = tg.create_task(provider.serve_forever())
        await asyncio.to_thread(relay.start)
        try:
            yield relay
        finally:
            serving.cancel()
            await asyncio.to_thread(relay.close)
            broker.send_signal(signal.SIGTERM)
            await asyncio.to_thread(broker.wait, 30)


async def test_the_device_link_carries_out_a_call_from_the_command_line(
    linked: DeviceRelay,
) -> None:
    controller = url(linked, "home")

    async def tools() -> bool:
        _, out, _ = await kiki("state", controller, "--json")
        return "dev.kiki.demo.echo" in json.loads(out or "{}").get("tools", [])

    await until(tools, "the link writes the tools")
    code, out, err = await kiki("call", controller, "dev.kiki.demo.echo", '{"text": "hi"}')
    assert (code, err) == (0, "")
    assert json.loads(out)["text"] == "hi"
    code, out, err = await kiki("call", controller, "dev.kiki.demo.nothing")
    assert (code, out) == (1, "")
    assert err.startswith("kiki remote: dev.kiki.demo.nothing: NotFound: ")
