"""Event streams end to end: the real broker process, raw JSON-RPC peers on its socket."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from kikitest import until
from kikitest.broker_fixtures import RawPeer, RpcFailed, broker_rss_kib
from kikitest.broker_lexicons import ECHO, LEXICONS, TICKS, TICKS_LEXICON
from libkiki.audit import read_entries
from libkiki.streams_client import Event as StreamEvent
from libkiki.tools import ToolClient, ToolProvider

pytestmark = pytest.mark.integration

Broker = tuple[Path, subprocess.Popen[bytes]]
GET_INFO = "dev.kiki.service.getInfo"


async def provider(path: Path, *, tools: bool = False) -> RawPeer:
    peer = await RawPeer.open(path)
    params: dict[str, Any] = {
        "tools": [ECHO] if tools else [],
        "subscriptions": [TICKS],
        "lexicons": [TICKS_LEXICON, *LEXICONS],
    }
    answer = await peer.request("kiki/registerTools", params)
    assert answer["subscriptions"] == [TICKS]
    return peer


async def accept_open(peer: RawPeer, nsid: str = TICKS, **params: Any) -> int:
    """Take the next kiki/openStream (for ``nsid`` with ``params``), accept it: its stream."""
    rid, method, got = await peer.requests.get()
    assert method == "kiki/openStream"
    assert got["nsid"] == nsid, got
    assert got["params"] == params, got
    peer.answer(rid)
    stream: int = got["stream"]
    return stream


def emit(peer: RawPeer, stream: int, n: int, pad: str = "") -> None:
    message: dict[str, Any] = {"n": n}
    if pad:
        message["pad"] = pad
    peer.notify("kiki/emit", {"stream": stream, "message": message})


async def subscribe(peer: RawPeer, nsid: str = TICKS, **params: Any) -> dict[str, Any]:
    answer: dict[str, Any] = await peer.request("kiki/subscribe", {"nsid": nsid, "params": params})
    return answer


async def counters(peer: RawPeer) -> dict[str, int]:
    info = await peer.request(GET_INFO)
    return {k: v for k, v in info["counters"].items() if k.startswith("stream_")}


async def until_live(peer: RawPeer, sub: int) -> None:
    status = await peer.note("kiki/streamStatus")
    assert status == {"subscription": sub, "state": "live", "reason": None, "interruptions": 0}


async def test_subscribe_receive_unsubscribe_audited(broker: Broker, sockdir: Path) -> None:
    path, _ = broker
    async with asyncio.timeout(20):
        prov = await provider(path)
        client = await RawPeer.open(path)
        answer = await subscribe(client, room="a")
        sub = answer["subscription"]
        assert answer["state"] == "opening"
        stream = await accept_open(prov, room="a")
        await until_live(client, sub)
        for n in range(3):
            emit(prov, stream, n)
        for n in range(3):
            assert await client.note("kiki/event") == {
                "subscription": sub,
                "seq": n + 1,
                "message": {"n": n},
            }
        assert await client.request("kiki/unsubscribe", {"subscription": sub}) == {}
        assert await prov.note("kiki/closeStream") == {"stream": stream}
        with pytest.raises(RpcFailed) as info:
            await client.request("kiki/unsubscribe", {"subscription": sub})
        assert info.value.code == -32004
        await client.close()
        await prov.close()
    lines = read_entries(sockdir / "state" / "audit.jsonl")
    mine = [(e.get("event"), e.get("reason"), e["argsHash"]) for e in lines if e["tool"] == TICKS]
    params_hash = mine[0][2]
    assert mine == [("subscribe", None, params_hash), ("unsubscribe", "unsubscribed", params_hash)]


async def test_bad_nsid_or_params_are_invalid_params(broker: Broker) -> None:
    path, _ = broker
    async with asyncio.timeout(20), await provider(path), await RawPeer.open(path) as client:
        for nsid, params in ((ECHO, {}), ("org.example.none", {}), (TICKS, {"room": 7})):
            with pytest.raises(RpcFailed) as info:
                await client.request("kiki/subscribe", {"nsid": nsid, "params": params})
            assert info.value.code == -32602, (nsid, info.value)
        with pytest.raises(RpcFailed) as info:  # Kiki's own methods are strict
            await client.request("kiki/subscribe", {"nsid": TICKS, "since": 3})
        assert info.value.code == -32602


async def test_two_subscribers_share_one_upstream(broker: Broker) -> None:
    path, _ = broker
    async with asyncio.timeout(20):
        prov = await provider(path)
        a, b, c = [await RawPeer.open(path) for _ in range(3)]
        sub_a = (await subscribe(a, room="x"))["subscription"]
        stream = await accept_open(prov, room="x")
        await until_live(a, sub_a)
        answer_b = await subscribe(b, room="x")
        assert answer_b["state"] == "live"  # the upstream is open already: no second one
        sub_c = (await subscribe(c, room="y"))["subscription"]
        other = await accept_open(prov, room="y")  # other params: another upstream
        assert other != stream
        assert prov.requests.empty()
        await until_live(c, sub_c)
        emit(prov, stream, 7)
        emit(prov, other, 8)
        assert (await a.note("kiki/event"))["message"] == {"n": 7}
        assert await b.note("kiki/event") == {
            "subscription": answer_b["subscription"],
            "seq": 1,
            "message": {"n": 7},
        }
        assert (await c.note("kiki/event"))["message"] == {"n": 8}
        # The last subscriber of a topic leaving closes its upstream, not before.
        await a.request("kiki/unsubscribe", {"subscription": sub_a})
        await b.request("kiki/unsubscribe", {"subscription": answer_b["subscription"]})
        assert await prov.note("kiki/closeStream") == {"stream": stream}
        for peer in (a, b, c, prov):
            await peer.close()


async def test_a_provider_that_goes_and_comes_back_resumes_its_subscribers(
    broker: Broker,
) -> None:
    path, _ = broker
    async with asyncio.timeout(20), await RawPeer.open(path) as client:
        prov = await provider(path)
        sub = (await subscribe(client))["subscription"]
        stream = await accept_open(prov)
        await until_live(client, sub)
        emit(prov, stream, 1)
        assert (await client.note("kiki/event"))["seq"] == 1
        await prov.close()
        assert await client.note("kiki/streamStatus") == {
            "subscription": sub,
            "state": "waiting",
            "reason": "providerGone",
            "interruptions": 1,
        }
        again = await provider(path)  # nothing asked of the client
        stream2 = await accept_open(again)
        status = await client.note("kiki/streamStatus")
        assert status["state"] == "live"
        emit(again, stream2, 2)
        assert await client.note("kiki/event") == {
            "subscription": sub,
            "seq": 2,
            "message": {"n": 2},
        }
        # A message on the old stream number is stale: dropped, nobody confused.
        await again.close()


async def test_a_refused_upstream_ends_its_subscribers(broker: Broker) -> None:
    path, _ = broker
    async with asyncio.timeout(20), await provider(path) as prov, await RawPeer.open(path) as c:
        sub = (await subscribe(c, room="no"))["subscription"]
        rid, _, _ = await prov.requests.get()
        prov.answer(rid, error={"code": -32602, "message": "no such room"})
        ended = await c.note("kiki/ended")
        assert ended == {"subscription": sub, "reason": "refused", "message": "no such room"}
        with pytest.raises(RpcFailed) as info:
            await c.request("kiki/unsubscribe", {"subscription": sub})
        assert info.value.code == -32004


async def test_a_stream_cancelled_before_it_went_live_is_closed_at_the_provider(
    broker: Broker,
) -> None:
    path, _ = broker
    async with asyncio.timeout(20), await provider(path) as prov, await RawPeer.open(path) as c:
        sub = (await subscribe(c))["subscription"]
        rid, method, opened = await prov.requests.get()
        assert method == "kiki/openStream"  # not answered: the upstream is still opening
        await c.request("kiki/unsubscribe", {"subscription": sub})
        # The provider is told both ways: its openStream request is cancelled, and the stream
        # closed in case it had started it (its answer may be on the way).
        told = sorted([await prov.notes.get(), await prov.notes.get()], key=lambda n: n[0])
        assert told == [
            ("kiki/closeStream", {"stream": opened["stream"]}),
            ("notifications/cancelled", {"requestId": rid, "reason": "cancelled"}),
        ]
        prov.answer(rid)  # too late: nobody is subscribed, nothing opens
        emit(prov, opened["stream"], 1)
        now = await counters(c)
        assert now["stream_subscriptions"] == now["stream_topics"] == 0
        assert now["stream_upstreams"] == 0
        assert now["stream_stale_tokens"] == 1  # the emit on the closed stream


async def test_getinfo_reports_the_same_gauges_however_often_it_is_read(broker: Broker) -> None:
    path, _ = broker
    async with asyncio.timeout(20), await provider(path) as prov, await RawPeer.open(path) as c:
        await subscribe(c, room="a")
        await accept_open(prov, room="a")
        first = await counters(c)
        second = await counters(c)
        assert first["stream_subscriptions"] == 1
        assert first["stream_topics"] == first["stream_upstreams"] == 1
        # Read, not counted: the second read is the same (what is open now, not a sum).
        assert {k: second[k] for k in first if k != "stream_notifications"} == {
            k: v for k, v in first.items() if k != "stream_notifications"
        }


async def test_a_message_failing_its_lexicon_is_rejected_and_the_provider_told(
    broker: Broker,
) -> None:
    path, _ = broker
    async with asyncio.timeout(20), await provider(path) as prov, await RawPeer.open(path) as c:
        sub = (await subscribe(c))["subscription"]
        stream = await accept_open(prov)
        await until_live(c, sub)
        prov.notify("kiki/emit", {"stream": stream, "message": {"n": "one"}})
        rejected = await prov.note("kiki/rejected")
        assert rejected["stream"] == stream
        assert rejected["error"]["code"] == -32602
        assert "message.n" in rejected["error"]["message"]
        emit(prov, stream, 1)
        assert await c.note("kiki/event") == {"subscription": sub, "seq": 1, "message": {"n": 1}}
        assert (await counters(c))["stream_rejected"] == 1


async def test_registration_is_all_or_nothing_with_streams(broker: Broker) -> None:
    path, _ = broker
    async with asyncio.timeout(20), await provider(path), await RawPeer.open(path) as second:
        with pytest.raises(RpcFailed) as info:
            await second.request(
                "kiki/registerTools",
                {
                    "tools": [ECHO],
                    "subscriptions": [TICKS],
                    "lexicons": [TICKS_LEXICON, *LEXICONS],
                },
            )
        assert info.value.code == -32009
        listed = await second.request("tools/list")
        assert ECHO not in [t["name"] for t in listed["tools"]]


async def test_a_subscriber_that_never_reads_holds_bounded_memory_and_slows_nobody(
    broker: Broker,
) -> None:
    path, proc = broker
    pad = "x" * 1000
    total = 20_000  # 20 MB through the broker, far more than a queue and socket buffers hold
    async with asyncio.timeout(120), await provider(path) as prov, await RawPeer.open(path) as fast:
        sub_fast = (await subscribe(fast))["subscription"]
        stream = await accept_open(prov)
        await until_live(fast, sub_fast)
        # The stalled subscriber: subscribes, then never reads another byte.
        stalled = socket.socket(socket.AF_UNIX)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(str(path))
        request = {"jsonrpc": "2.0", "id": 1, "method": "kiki/subscribe", "params": {"nsid": TICKS}}
        stalled.sendall(orjson.dumps(request) + b"\n")
        for _ in range(1000):  # the broker has taken it in once its count says so
            if (await counters(fast))["stream_subscriptions"] == 2:
                break
        before = broker_rss_kib(proc.pid)
        seen = lost = 0
        for burst in range(total // 500):
            for i in range(500):
                emit(prov, stream, burst * 500 + i, pad)
            await prov.writer.drain()
            # The reader keeps up with the provider, whatever the stalled one does.
            while seen + lost < (burst + 1) * 500:
                method, params = await fast.notes.get()
                if method == "kiki/lost":
                    lost += params["count"]
                else:
                    assert method == "kiki/event"
                    seen += 1
        grown = broker_rss_kib(proc.pid) - before
        assert seen + lost == total
        assert lost == 0  # a reader that keeps up loses nothing
        # The stalled subscriber's queue (256 KiB) plus write buffers: nowhere near 20 MB.
        assert grown < 16 * 1024, f"RSS grew by {grown} KiB"
        # When it reads at last, it is told exactly how many it missed.
        stalled.settimeout(10)
        events = _read_lines(stalled, until=lambda m: m.get("method") == "kiki/event")
        stalled.close()
    seqs: list[int] = []
    missed = 0
    for msg in events:
        if msg.get("method") == "kiki/event":
            seqs.append(msg["params"]["seq"])
        elif msg.get("method") == "kiki/lost":
            missed += msg["params"]["count"]
    assert missed > 0
    assert seqs[-1] == len(seqs) + missed


def _read_lines(sock: socket.socket, until: Any) -> list[dict[str, Any]]:
    """Everything ``sock`` is sent (batches taken apart) until a pause after ``until`` matched."""
    buf = b""
    out: list[dict[str, Any]] = []
    seen = False
    while True:
        try:
            sock.settimeout(0.5 if seen else 10)
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            return out
        if not chunk:
            return out
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            obj = orjson.loads(line)
            for msg in obj if isinstance(obj, list) else [obj]:
                out.append(msg)
                seen = seen or until(msg)


async def test_a_subscriber_that_vanishes_releases_everything(broker: Broker) -> None:
    path, proc = broker
    async with asyncio.timeout(20), await provider(path) as prov, await RawPeer.open(path) as w:
        await counters(w)  # both connections accepted: the broker's fds as they stay
        fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
        gone = await RawPeer.open(path)
        sub = (await subscribe(gone))["subscription"]
        stream = await accept_open(prov)
        await until_live(gone, sub)
        emit(prov, stream, 1)
        await gone.close()
        assert await prov.note("kiki/closeStream") == {"stream": stream}
        now = await counters(w)
        assert now["stream_subscriptions"] == now["stream_topics"] == 0
        assert now["stream_upstreams"] == now["stream_writers"] == 0
        await until(lambda: len(os.listdir(f"/proc/{proc.pid}/fd")) == fds, "its fd closed")


async def test_ten_thousand_subscribe_unsubscribe_cycles_leave_the_counts_flat(
    broker: Broker,
) -> None:
    path, proc = broker
    async with asyncio.timeout(120), await provider(path) as prov, await RawPeer.open(path) as c:

        async def provider_accepts() -> None:
            while True:
                rid, _, _ = await prov.requests.get()
                prov.answer(rid)

        acceptor = asyncio.get_running_loop().create_task(provider_accepts())
        rss: list[int] = []
        for round_ in range(200):  # 50 at once: under the 64 a connection may hold
            subs = await asyncio.gather(*(subscribe(c, room=str(i % 7)) for i in range(50)))
            await asyncio.gather(
                *(c.request("kiki/unsubscribe", {"subscription": s["subscription"]}) for s in subs)
            )
            if round_ in (19, 199):
                rss.append(broker_rss_kib(proc.pid))
        # The limit holds, and what it refused leaves nothing behind either.
        tries = await asyncio.gather(*(subscribe(c) for _ in range(65)), return_exceptions=True)
        refused = tries.pop()
        assert isinstance(refused, RpcFailed), refused
        assert refused.code == -32005
        assert refused.data == {"limit": 64}
        for answer in tries:
            assert isinstance(answer, dict)
            await c.request("kiki/unsubscribe", {"subscription": answer["subscription"]})
        acceptor.cancel()
        now = await counters(c)
        assert now["stream_subscriptions"] == now["stream_topics"] == now["stream_upstreams"] == 0
        # The writer of this connection stays while it is connected; no other is left.
        assert now["stream_writers"] == 1
        assert rss[1] - rss[0] < 8 * 1024, rss


async def test_policy_denies_subscribe_but_not_calls(sockdir: Path, spawn_service: Any) -> None:
    (sockdir / "etc").mkdir()
    (sockdir / "etc" / "tool-policy.toml").write_text(
        f'[[deny]]\nprincipals = ["uid:{os.getuid()}"]\ntools = ["org.example.test.*"]\n'
        'access = ["subscribe"]\n'
    )
    proc, notes = spawn_service("tool-broker")
    notes.wait_for("READY")
    path = sockdir / "tools.sock"
    async with (
        asyncio.timeout(20),
        await provider(path, tools=True) as prov,
        await RawPeer.open(path) as c,
    ):

        async def answer_echo() -> None:
            rid, _, params = await prov.requests.get()
            text = params["arguments"]["text"]
            prov.answer(rid, {"content": [], "structuredContent": {"text": text}})

        task = asyncio.get_running_loop().create_task(answer_echo())
        with pytest.raises(RpcFailed) as info:
            await subscribe(c)
        assert info.value.code == -32003
        result = await c.request("tools/call", {"name": ECHO, "arguments": {"text": "hi"}})
        assert result["structuredContent"] == {"text": "hi"}
        await task
    proc.terminate()
    assert proc.wait(timeout=30) == 0
    denied = [e for e in read_entries(sockdir / "state" / "audit.jsonl") if e["tool"] == TICKS]
    assert [(e["event"], e["outcome"]) for e in denied] == [("subscribe", "denied")]


async def test_the_brokers_own_streams_deliver(broker: Broker) -> None:
    path, _ = broker
    async with asyncio.timeout(20), await RawPeer.open(path) as c:
        providers = (await subscribe(c, "dev.kiki.tools.subscribeProviders"))["subscription"]
        await until_live(c, providers)
        audit = (await subscribe(c, "dev.kiki.tools.subscribeAudit"))["subscription"]
        prov = await provider(path)
        await prov.close()
        got: dict[int, list[Any]] = {providers: [], audit: []}

        async def collect(done: Any) -> None:
            while not done():
                method, params = await c.notes.get()
                if method == "kiki/event":
                    got[params["subscription"]].append(params["message"])

        await collect(lambda: len(got[providers]) == 2)
        await c.request("tools/call", {"name": GET_INFO})
        await collect(lambda: any(e["tool"] == GET_INFO for e in got[audit]))
        connected, disconnected = got[providers]
        assert connected["$type"] == "dev.kiki.tools.subscribeProviders#connected"
        assert disconnected == {
            "$type": "dev.kiki.tools.subscribeProviders#disconnected",
            "id": connected["provider"]["id"],
            "reason": "closed",
        }
        entries = got[audit]
        seqs = [e["seq"] for e in entries]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # every line, in order
        assert entries[0]["event"] == "subscribe"  # its own subscription, the first it sees
        assert entries[0]["tool"] == "dev.kiki.tools.subscribeAudit"
        assert entries[-1]["tool"] == GET_INFO
        assert entries[-1]["outcome"] == "ok"


async def test_libkiki_client_and_provider_through_the_broker(broker: Broker) -> None:
    """The other side of the wire as libkiki speaks it: ToolProvider's generators, ToolClient's
    iterator."""
    path, _ = broker
    prov = ToolProvider(path, lexicons=[TICKS_LEXICON])

    @prov.subscription(TICKS)
    async def ticks(params: dict[str, Any], stream: Any) -> AsyncIterator[dict[str, Any]]:
        for n in range(5):
            yield {"n": n}
        await asyncio.Event().wait()  # live until its last subscriber leaves

    got: list[tuple[int, Any]] = []
    async with (
        asyncio.timeout(20),
        prov.connect(),
        ToolClient(path) as client,
        client.subscribe(TICKS, room="lib") as sub,
    ):
        async for item in sub:
            if isinstance(item, StreamEvent):
                got.append((item.seq, item.message))
                if len(got) == 5:
                    break
        # The listing of streams served now names this one's provider (the broker's own too).
        listed = {s["nsid"]: s for s in await client.streams()}
    assert got == [(n + 1, {"n": n}) for n in range(5)]
    assert listed[TICKS]["provider"]["pid"] == os.getpid()
    assert listed[TICKS]["description"]
    assert listed["dev.kiki.tools.subscribeAudit"]["provider"]["identity"] == "app:kiki-tool-broker"


async def test_a_policy_reload_ends_what_it_now_denies(sockdir: Path, spawn_service: Any) -> None:
    (sockdir / "etc").mkdir()
    policy = sockdir / "etc" / "tool-policy.toml"
    policy.write_text("")
    proc, notes = spawn_service("tool-broker")
    notes.wait_for("READY")
    path = sockdir / "tools.sock"
    async with asyncio.timeout(20), await provider(path) as prov, await RawPeer.open(path) as c:
        sub = (await subscribe(c))["subscription"]
        await accept_open(prov)
        await until_live(c, sub)
        policy.write_text(
            f'[[deny]]\nprincipals = ["uid:{os.getuid()}"]\ntools = ["org.example.*"]\n'
            'access = ["subscribe"]\n'
        )
        proc.send_signal(signal.SIGHUP)
        assert await c.note("kiki/ended") == {
            "subscription": sub,
            "reason": "denied",
            "message": "the policy no longer allows it: denied by policy",
        }
        assert await prov.note("kiki/closeStream")
    proc.terminate()
    assert proc.wait(timeout=30) == 0
    ends = [e for e in read_entries(sockdir / "state" / "audit.jsonl") if e["tool"] == TICKS]
    assert [(e["event"], e.get("reason")) for e in ends] == [
        ("subscribe", None),
        ("unsubscribe", "denied"),
    ]


async def test_a_stopping_broker_ends_its_subscriptions(broker: Broker) -> None:
    path, proc = broker
    async with asyncio.timeout(20), await provider(path), await RawPeer.open(path) as c:
        sub = (await subscribe(c, "dev.kiki.tools.subscribeProviders"))["subscription"]
        await until_live(c, sub)
        proc.send_signal(signal.SIGTERM)
        assert await c.note("kiki/ended") == {
            "subscription": sub,
            "reason": "shutdown",
            "message": None,
        }
    # Its own exit, not the fixture's second SIGTERM (which, landing after the handlers are gone,
    # would end a process still exiting with the default action).
    assert await asyncio.to_thread(proc.wait, 20) == 0
