"""``kiki events watch`` against a scripted broker on a real Unix socket (issue 18's protocol):
lines as events come, every end, an absent broker, Ctrl-C, a reader that goes away, globs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from kikitest import VENV_BIN, kiki, until
from kikitest.broker_lexicons import TICKS, TICKS_LEXICON
from kikitest.stream_peer import PeerConnection, Refuse, ScriptedBroker
from libkiki.audit import read_entries
from libkiki.tools import StreamContext, ToolClient, ToolProvider

pytestmark = pytest.mark.integration

NSID = "org.example.ticks"


@pytest.fixture
async def scripted(sockdir: Path) -> AsyncIterator[ScriptedBroker]:
    async with ScriptedBroker(sockdir / "tools.sock").serving() as peer:
        yield peer


def event(sub: int, seq: int, message: Any) -> tuple[str, dict[str, Any]]:
    return "kiki/event", {"subscription": sub, "seq": seq, "message": message}


async def watch(path: Path, *args: str, stdout: int = asyncio.subprocess.PIPE) -> Any:
    return await asyncio.create_subprocess_exec(
        str(VENV_BIN / "kiki"),
        "events",
        "--socket",
        str(path),
        "watch",
        *args,
        stdout=stdout,
        stderr=asyncio.subprocess.PIPE,
    )


async def subscribed(broker: ScriptedBroker, n: int = 1) -> PeerConnection:
    """The connection of the one ``kiki`` run, once it has made ``n`` subscriptions."""
    conn = await broker.connection()
    await until(lambda: len(broker.subscribes) >= n, "the subscriptions")
    return conn


async def line(proc: Any) -> str:
    async with asyncio.timeout(20):
        text: bytes = await proc.stdout.readline()
    return text.decode()


async def finish(proc: Any) -> tuple[int, str, str]:
    async with asyncio.timeout(20):
        out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


async def test_events_print_live_as_json_and_an_end_exits_0(scripted: ScriptedBroker) -> None:
    proc = await watch(scripted.path, NSID, "room=kitchen", "n=3", "--json")
    conn = await subscribed(scripted)
    await conn.notify(*event(1, 1, {"n": 1}))
    assert json.loads(await line(proc)) == {"nsid": NSID, "seq": 1, "message": {"n": 1}}
    assert scripted.subscribes == [{"nsid": NSID, "params": {"room": "kitchen", "n": 3}}]
    await conn.notify_all(
        ("kiki/lost", {"subscription": 1, "count": 2}),
        event(1, 4, {"n": 4}),
        ("kiki/streamStatus", {"subscription": 1, "state": "waiting", "reason": "providerGone"}),
        ("kiki/ended", {"subscription": 1, "reason": "providerEnded", "message": "done"}),
    )
    code, out, err = await finish(proc)
    assert code == 0, err
    assert [orjson.loads(x) for x in out.splitlines()] == [
        {"nsid": NSID, "lost": 2},
        {"nsid": NSID, "seq": 4, "message": {"n": 4}},
        {"nsid": NSID, "status": "waiting", "reason": "providerGone", "interruptions": 0},
        {"nsid": NSID, "ended": "providerEnded", "message": "done"},
    ]


async def test_a_line_per_event_for_people(scripted: ScriptedBroker) -> None:
    proc = await watch(scripted.path, NSID)
    conn = await subscribed(scripted)
    await conn.notify(*event(1, 1, {"n": 1}))
    assert (await line(proc)).rstrip().endswith(f' {NSID} #1 {{"n":1}}')
    await conn.notify("kiki/ended", {"subscription": 1, "reason": "providerEnded"})
    code, out, _ = await finish(proc)
    assert code == 0
    assert out.rstrip().endswith(f"{NSID}: ended (providerEnded)")


@pytest.mark.parametrize("reason", ["refused", "denied", "shutdown"])
async def test_an_end_with_an_error_exits_1_and_says_why(
    scripted: ScriptedBroker, reason: str
) -> None:
    proc = await watch(scripted.path, NSID)
    conn = await subscribed(scripted)
    await conn.notify("kiki/ended", {"subscription": 1, "reason": reason, "message": "because"})
    code, out, err = await finish(proc)
    assert code == 1
    assert f"ended ({reason}: because)" in out
    assert err.startswith(f"kiki events: {NSID}: ")
    assert "because" in err
    assert "Traceback" not in err


async def test_a_refused_subscription_exits_1(scripted: ScriptedBroker) -> None:
    def refuse(params: dict[str, Any]) -> Any:
        raise Refuse(-32602, f"{params['nsid']} is not a subscription")

    scripted.handlers["kiki/subscribe"] = refuse
    proc = await watch(scripted.path, NSID)
    code, _, err = await finish(proc)
    assert code == 1
    assert err == f"kiki events: {NSID} is not a subscription\n"


async def test_the_connection_lost_exits_1(scripted: ScriptedBroker) -> None:
    proc = await watch(scripted.path, NSID)
    conn = await subscribed(scripted)
    await conn.notify(*event(1, 1, "a"))
    await line(proc)
    await conn.close()
    code, _, err = await finish(proc)
    assert code == 1
    assert "lost" in err
    assert "Traceback" not in err


def test_no_broker_exits_1_with_a_message(sockdir: Path) -> None:
    done = kiki("events", "--socket", str(sockdir / "none.sock"), "watch", NSID)
    assert done.returncode == 1
    assert done.stderr.startswith("kiki events: cannot connect to ")
    assert done.stdout == ""


async def test_ctrl_c_exits_0(scripted: ScriptedBroker) -> None:
    proc = await watch(scripted.path, NSID)
    conn = await subscribed(scripted)
    await conn.notify(*event(1, 1, "a"))
    await line(proc)  # subscribed and printing
    proc.send_signal(signal.SIGINT)
    code, _, err = await finish(proc)
    assert code == 0, err
    assert "Traceback" not in err


async def test_a_reader_that_goes_away_ends_it_as_it_ends_cat(scripted: ScriptedBroker) -> None:
    read, write = os.pipe()
    proc = await watch(scripted.path, NSID, stdout=write)
    os.close(write)
    conn = await subscribed(scripted)
    await conn.notify(*event(1, 1, "a"))
    line = b""
    while not line.endswith(b"\n"):  # unbuffered output may come in more than one write
        chunk = os.read(read, 100)
        assert chunk, line
        line += chunk
    assert line.endswith(b'#1 "a"\n')
    os.close(read)
    await conn.notify(*event(1, 2, "b"))
    async with asyncio.timeout(20):
        _, err = await proc.communicate()
    assert proc.returncode == -signal.SIGPIPE
    assert err == b""


def subscription_lexicon(nsid: str) -> dict[str, Any]:
    return {
        "lexicon": 1,
        "id": nsid,
        "defs": {
            "main": {
                "type": "subscription",
                "message": {"schema": {"type": "object", "properties": {}}},
            }
        },
    }


async def test_a_glob_watches_every_matching_subscription_lexicon(
    scripted: ScriptedBroker, tmp_path: Path
) -> None:
    for nsid in ("org.example.a.watchOne", "org.example.a.watchTwo", "org.example.b.watch"):
        *dirs, name = nsid.split(".")
        where = tmp_path.joinpath(*dirs)
        where.mkdir(parents=True, exist_ok=True)
        (where / f"{name}.json").write_bytes(orjson.dumps(subscription_lexicon(nsid)))
    proc = await watch(scripted.path, "org.example.a.*", "--json", "--lexicons", str(tmp_path))
    conn = await subscribed(scripted, 2)
    await conn.notify_all(
        ("kiki/ended", {"subscription": 1, "reason": "providerEnded"}),
        ("kiki/ended", {"subscription": 2, "reason": "providerEnded"}),
    )
    code, out, err = await finish(proc)
    assert code == 0, err
    assert sorted(s["nsid"] for s in scripted.subscribes) == [
        "org.example.a.watchOne",
        "org.example.a.watchTwo",
    ]
    assert len(out.splitlines()) == 2


def test_a_glob_nothing_matches_exits_1(tmp_path: Path) -> None:
    done = kiki("events", "watch", "org.nothing.*", "--lexicons", str(tmp_path))
    assert done.returncode == 1
    assert "no subscription lexicon matches 'org.nothing.*'" in done.stderr


def test_bad_parameters_are_a_usage_error() -> None:
    done = kiki("events", "watch", NSID, "novalue")
    assert done.returncode == 2
    assert "'novalue' is not key=value" in done.stderr


# -- kiki tools log --follow: the audit stream, or polling from a broker without it ----------

AUDIT_TOOL = "dev.kiki.tools.readAuditLog"
AUDIT_STREAM = "dev.kiki.tools.subscribeAudit"


def entry(seq: int, tool: str = "org.example.echo", pid: int = 1) -> dict[str, Any]:
    return {"seq": seq, "time": "t", "tool": tool, "outcome": "ok", "caller": {"pid": pid}}


def audit_pages(scripted: ScriptedBroker, newest: int) -> list[dict[str, Any]]:
    """readAuditLog as tools/call: the log holds entries 1..newest; records each call."""
    calls: list[dict[str, Any]] = []

    def call(params: dict[str, Any]) -> dict[str, Any]:
        assert params["name"] == AUDIT_TOOL
        calls.append(params["arguments"])
        cursor = params["arguments"].get("cursor")
        if cursor is None:  # the newest page
            page = {"entries": [entry(newest)], "cursor": newest}
        else:
            page = {"entries": [], "cursor": cursor}
        return {"structuredContent": page, "isError": False}

    scripted.handlers["tools/call"] = call
    return calls


async def test_log_follow_takes_the_audit_stream(scripted: ScriptedBroker) -> None:
    calls = audit_pages(scripted, newest=10)
    proc = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "kiki"),
        *("tools", "--socket", str(scripted.path), "log", "--follow", "--json", "--limit", "1"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    conn = await subscribed(scripted)
    assert scripted.subscribes == [{"nsid": AUDIT_STREAM}]
    assert orjson.loads(await line(proc))["seq"] == 10  # the newest entry, read as a page
    await conn.notify_all(
        event(1, 1, entry(10)),  # written before the page was read: shown with it already
        event(1, 2, entry(11, AUDIT_STREAM, pid=proc.pid)),  # its own subscription: not shown
        event(1, 3, entry(12)),
        ("kiki/lost", {"subscription": 1, "count": 4}),
        event(1, 8, entry(17)),
        ("kiki/ended", {"subscription": 1, "reason": "shutdown"}),
    )
    code, out, err = await finish(proc)
    assert [orjson.loads(x)["seq"] for x in out.splitlines()] == [12, 17]
    assert "4 audit entries were not shown" in err
    assert code == 1  # the broker went away while it followed
    assert len(calls) == 1  # no polls


async def test_log_follow_polls_a_broker_without_the_stream(scripted: ScriptedBroker) -> None:
    def no_streams(params: dict[str, Any]) -> Any:
        raise Refuse(-32601, "Method not found")

    scripted.handlers["kiki/subscribe"] = no_streams
    calls = audit_pages(scripted, newest=3)
    proc = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "kiki"),
        *("tools", "--socket", str(scripted.path), "log", "--follow", "--json", "--limit", "1"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert orjson.loads(await line(proc))["seq"] == 3
        await until(lambda: any("cursor" in c for c in calls), "a poll")
        assert calls[-1]["cursor"] == 3
    finally:
        proc.send_signal(signal.SIGINT)
        code, _, err = await finish(proc)
    assert code == 0, err


# -- through the real broker ------------------------------------------------------------------


async def test_watch_prints_a_providers_events_through_the_broker(
    broker: tuple[Path, subprocess.Popen[bytes]],
) -> None:
    path, _ = broker
    feed: asyncio.Queue[int | None] = asyncio.Queue()
    provider = ToolProvider(path, lexicons=[TICKS_LEXICON])

    @provider.subscription(TICKS)
    async def ticks(params: dict[str, Any], stream: StreamContext) -> AsyncIterator[dict[str, Any]]:
        assert params == {"room": "hall"}
        while (n := await feed.get()) is not None:
            yield {"n": n}

    async with provider.connect():
        proc = await watch(path, TICKS, "room=hall", "--json")
        try:
            for n in range(3):
                feed.put_nowait(n)
            lines: list[dict[str, Any]] = []
            while len([x for x in lines if "seq" in x]) < 3:
                lines.append(orjson.loads(await line(proc)))
            assert [x for x in lines if "seq" in x] == [
                {"nsid": TICKS, "seq": n + 1, "message": {"n": n}} for n in range(3)
            ]
            feed.put_nowait(None)  # the generator ends: so does the stream, and kiki
            code, out, err = await finish(proc)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert code == 0, err
    assert orjson.loads(out.splitlines()[-1]) == {
        "nsid": TICKS,
        "ended": "providerEnded",
        "message": None,
    }


async def test_log_follow_subscribes_to_the_brokers_audit_stream(
    broker: tuple[Path, subprocess.Popen[bytes]], sockdir: Path
) -> None:
    path, _ = broker
    proc = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "kiki"),
        *("tools", "--socket", str(path), "log", "--follow", "--json", "--limit", "0"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    audit = sockdir / "state" / "audit.jsonl"

    def mine() -> list[dict[str, Any]]:
        return [e for e in read_entries(audit) if e["caller"]["pid"] == proc.pid]

    try:
        # Its one read of the log (audited once answered) comes after its subscription.
        await until(lambda: any(e["tool"] == AUDIT_TOOL for e in mine()), "the first read")
        assert [(e["tool"], e.get("event")) for e in mine()] == [
            (AUDIT_STREAM, "subscribe"),
            (AUDIT_TOOL, None),
        ]
        async with ToolClient(path) as client:
            await client.call("dev.kiki.service.getInfo")
        shown = orjson.loads(await line(proc))
        assert (shown["tool"], shown["caller"]["pid"]) == ("dev.kiki.service.getInfo", os.getpid())
        assert len(mine()) == 2  # no polls
    finally:
        proc.send_signal(signal.SIGINT)
        code, _, err = await finish(proc)
    assert code == 0, err
