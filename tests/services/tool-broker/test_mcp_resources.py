"""Event streams as MCP resources, on the wire: the real broker process, raw JSON-RPC peers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from kikitest.broker_fixtures import RawPeer, RpcFailed
from kikitest.broker_lexicons import LEXICONS, TICKS, TICKS_LEXICON
from libkiki.audit import read_entries

pytestmark = pytest.mark.integration

Broker = tuple[Path, subprocess.Popen[bytes]]
UPDATED = "notifications/resources/updated"
ROOM_A = f"kiki-stream://{TICKS}?room=a"
AUDIT = "kiki-stream://dev.kiki.tools.subscribeAudit"


async def provider(path: Path) -> RawPeer:
    peer = await RawPeer.open(path)
    params = {"tools": [], "subscriptions": [TICKS], "lexicons": [TICKS_LEXICON, *LEXICONS]}
    await peer.request("kiki/registerTools", params)
    return peer


async def accept_open(peer: RawPeer, **params: Any) -> int:
    rid, method, got = await peer.requests.get()
    assert method == "kiki/openStream"
    assert (got["nsid"], got["params"]) == (TICKS, params)
    peer.answer(rid)
    stream: int = got["stream"]
    return stream


async def read(peer: RawPeer, uri: str) -> dict[str, Any]:
    result = await peer.request("resources/read", {"uri": uri})
    [content] = result["contents"]
    assert content["uri"] == uri
    assert content["mimeType"] == "application/json"
    body: dict[str, Any] = orjson.loads(content["text"])
    return body


async def test_initialize_offers_subscribable_resources(broker: Broker) -> None:
    path, _ = broker
    async with asyncio.timeout(20), await RawPeer.open(path) as c:
        init = await c.request("initialize", {"protocolVersion": "2025-11-25"})
        assert init["capabilities"]["resources"] == {"subscribe": True}


async def test_templates_follow_the_lexicons_and_typed_params(broker: Broker) -> None:
    path, _ = broker
    async with asyncio.timeout(20), await provider(path), await RawPeer.open(path) as c:
        listed = await c.request("resources/templates/list", {})
        by_name = {t["name"]: t for t in listed["resourceTemplates"]}
        assert by_name[TICKS]["uriTemplate"] == f"kiki-stream://{TICKS}{{?room}}"
        assert by_name["dev.kiki.tools.subscribeAudit"]["uriTemplate"] == AUDIT
        assert by_name[TICKS]["mimeType"] == "application/json"
        # Streams that need no params are listed as resources as they are.
        resources = {r["uri"] for r in (await c.request("resources/list", {}))["resources"]}
        assert AUDIT in resources
        # A URI that names no stream, or breaks its lexicon's params, is refused.
        for uri in ("kiki-stream://org.example.test.echo", f"{ROOM_A}{'x' * 20}", "http://x"):
            with pytest.raises(RpcFailed) as info:
                await c.request("resources/subscribe", {"uri": uri})
            assert info.value.code == -32602, uri


async def test_updated_once_until_read_then_again(broker: Broker) -> None:
    path, _ = broker
    async with asyncio.timeout(20), await provider(path) as prov, await RawPeer.open(path) as c:
        assert await c.request("resources/subscribe", {"uri": ROOM_A}) == {}
        stream = await accept_open(prov, room="a")
        # The stream going live is the first thing queued: one updated for it.
        assert await c.note(UPDATED) == {"uri": ROOM_A}
        for n in range(3):
            prov.notify("kiki/emit", {"stream": stream, "message": {"n": n}})
        await prov.request("dev.kiki.service.getInfo")  # the broker has taken the emits
        body = await read(c, ROOM_A)
        assert body["nsid"] == TICKS
        assert body["params"] == {"room": "a"}
        assert body["subscribed"] is True
        assert body["items"] == [
            {"status": "live", "reason": None, "interruptions": 0},
            {"seq": 1, "message": {"n": 0}},
            {"seq": 2, "message": {"n": 1}},
            {"seq": 3, "message": {"n": 2}},
        ]
        # Three messages came after the first updated, and none of them sent another (the
        # read's answer is written after anything they would have sent).
        assert c.notes.empty()
        assert (await read(c, ROOM_A))["items"] == []
        # Read: the next message is news again.
        prov.notify("kiki/emit", {"stream": stream, "message": {"n": 3}})
        assert await c.note(UPDATED) == {"uri": ROOM_A}
        assert (await read(c, ROOM_A))["items"] == [{"seq": 4, "message": {"n": 3}}]
        # Unsubscribing closes the shared upstream at the provider (the last subscriber left).
        assert await c.request("resources/unsubscribe", {"uri": ROOM_A}) == {}
        method, params = await prov.notes.get()
        assert (method, params) == ("kiki/closeStream", {"stream": stream})
        assert (await read(c, ROOM_A)) == {
            "uri": ROOM_A,
            "nsid": TICKS,
            "params": {"room": "a"},
            "subscribed": False,
            "items": [],
        }
        # Unsubscribing again is not an error: hosts tidy up.
        assert await c.request("resources/unsubscribe", {"uri": ROOM_A}) == {}


async def test_the_end_of_a_stream_is_read_and_forgets_it(broker: Broker) -> None:
    path, _ = broker
    async with asyncio.timeout(20), await provider(path) as prov, await RawPeer.open(path) as c:
        await c.request("resources/subscribe", {"uri": ROOM_A})
        stream = await accept_open(prov, room="a")
        assert await c.note(UPDATED) == {"uri": ROOM_A}
        prov.notify("kiki/endStream", {"stream": stream, "message": "done"})
        await prov.request("dev.kiki.service.getInfo")
        items = (await read(c, ROOM_A))["items"]
        assert items[-1] == {"ended": "providerEnded", "message": "done"}
        assert (await read(c, ROOM_A))["subscribed"] is False
        # Subscribing again opens a new upstream.
        await c.request("resources/subscribe", {"uri": ROOM_A})
        await accept_open(prov, room="a")


async def test_shares_the_upstream_with_kiki_subscribers(broker: Broker) -> None:
    path, _ = broker
    async with (
        asyncio.timeout(20),
        await provider(path) as prov,
        await RawPeer.open(path) as host,
        await RawPeer.open(path) as native,
    ):
        await host.request("resources/subscribe", {"uri": ROOM_A})
        stream = await accept_open(prov, room="a")
        answer = await native.request("kiki/subscribe", {"nsid": TICKS, "params": {"room": "a"}})
        sub = answer["subscription"]
        prov.notify("kiki/emit", {"stream": stream, "message": {"n": 7}})
        # It joined the shared upstream either while the broker still waited for the provider's
        # accept (then it is told when it goes live) or after (then its answer said so).
        if answer["state"] == "opening":
            assert await native.note("kiki/streamStatus") == {
                "subscription": sub,
                "state": "live",
                "reason": None,
                "interruptions": 0,
            }
        else:
            assert answer["state"] == "live"
        assert await native.note("kiki/event") == {
            "subscription": sub,
            "seq": 1,
            "message": {"n": 7},
        }
        assert await host.note(UPDATED) == {"uri": ROOM_A}
        items = (await read(host, ROOM_A))["items"]
        assert items[-1] == {"seq": 1, "message": {"n": 7}}
        assert prov.requests.empty()  # one upstream for both


async def test_policy_denies_resource_subscriptions(sockdir: Path, spawn_service: Any) -> None:
    (sockdir / "etc").mkdir()
    (sockdir / "etc" / "tool-policy.toml").write_text(
        f'[[deny]]\nprincipals = ["uid:{os.getuid()}"]\ntools = ["org.example.test.*"]\n'
        'access = ["subscribe"]\n'
    )
    _, notes = spawn_service("tool-broker")
    notes.wait_for("READY")
    path = sockdir / "tools.sock"
    async with asyncio.timeout(20), await provider(path) as prov, await RawPeer.open(path) as c:
        with pytest.raises(RpcFailed) as info:
            await c.request("resources/subscribe", {"uri": ROOM_A})
        assert info.value.code == -32003
        listed = await c.request("resources/templates/list", {})
        names = {t["name"] for t in listed["resourceTemplates"]}
        assert TICKS not in names
        assert "dev.kiki.tools.subscribeAudit" in names
        assert prov.requests.empty()  # nothing was opened upstream
        # The refusal is in the audit log, as for kiki/subscribe.
        log = await c.request(
            "tools/call", {"name": "dev.kiki.tools.readAuditLog", "arguments": {"limit": 5}}
        )
        entries = log["structuredContent"]["entries"]
        refused = [e for e in entries if e.get("event") == "subscribe" and e["tool"] == TICKS]
        assert refused
        assert refused[-1]["outcome"] != "ok"


async def test_a_bad_uri_is_refused_and_audited(broker: Broker, sockdir: Path) -> None:
    path, _ = broker
    bad: dict[Any, str] = {  # each URI, and the name its audit line gives it
        "kiki-stream://org.example.none": "org.example.none",  # no such stream
        f"kiki-stream://{TICKS}?room=a&room=b": TICKS,
        "https://example.org/x": "https://example.org/x",
        42: "42",
    }
    async with asyncio.timeout(20), await provider(path) as prov, await RawPeer.open(path) as c:
        for uri in bad:
            with pytest.raises(RpcFailed) as info:
                await c.request("resources/subscribe", {"uri": uri})
            assert info.value.code == -32602
        assert prov.requests.empty()
    entries = [
        e for e in read_entries(sockdir / "state" / "audit.jsonl") if e.get("event") == "subscribe"
    ]
    assert [(e["tool"], e["outcome"], e["code"]) for e in entries] == [
        (name, "invalid", -32602) for name in bad.values()
    ]


async def test_a_connection_with_both_kinds_gets_each_its_own_way(broker: Broker) -> None:
    path, _ = broker
    async with asyncio.timeout(20), await provider(path) as prov, await RawPeer.open(path) as c:
        native = await c.request("kiki/subscribe", {"nsid": TICKS, "params": {"room": "b"}})
        native_stream = await accept_open(prov, room="b")
        assert (await c.note("kiki/streamStatus"))["state"] == "live"
        await c.request("resources/subscribe", {"uri": ROOM_A})
        stream = await accept_open(prov, room="a")
        assert await c.note(UPDATED) == {"uri": ROOM_A}
        prov.notify("kiki/emit", {"stream": stream, "message": {"n": 1}})
        prov.notify("kiki/emit", {"stream": native_stream, "message": {"n": 2}})
        # The native subscription is written to; the resource's message waits to be read.
        assert await c.note("kiki/event") == {
            "subscription": native["subscription"],
            "seq": 1,
            "message": {"n": 2},
        }
        assert (await read(c, ROOM_A))["items"][-1] == {"seq": 1, "message": {"n": 1}}
        assert c.notes.empty()


async def test_a_policy_reload_ends_a_resource_subscription(
    sockdir: Path, spawn_service: Any
) -> None:
    (sockdir / "etc").mkdir()
    policy = sockdir / "etc" / "tool-policy.toml"
    policy.write_text("")
    proc, notes = spawn_service("tool-broker")
    notes.wait_for("READY")
    path = sockdir / "tools.sock"
    async with asyncio.timeout(20), await provider(path) as prov, await RawPeer.open(path) as c:
        await c.request("resources/subscribe", {"uri": ROOM_A})
        await accept_open(prov, room="a")
        assert await c.note(UPDATED) == {"uri": ROOM_A}
        assert (await read(c, ROOM_A))["items"][0]["status"] == "live"
        policy.write_text(
            f'[[deny]]\nprincipals = ["uid:{os.getuid()}"]\ntools = ["org.example.*"]\n'
            'access = ["subscribe"]\n'
        )
        proc.send_signal(signal.SIGHUP)
        assert await c.note(UPDATED) == {"uri": ROOM_A}
        assert (await read(c, ROOM_A))["items"] == [
            {"ended": "denied", "message": "the policy no longer allows it: denied by policy"}
        ]
        assert await prov.note("kiki/closeStream")
        assert (await read(c, ROOM_A))["subscribed"] is False
    proc.terminate()
    assert proc.wait(timeout=30) == 0
    ends = [e for e in read_entries(sockdir / "state" / "audit.jsonl") if e["tool"] == TICKS]
    assert [(e["event"], e.get("reason")) for e in ends] == [
        ("subscribe", None),
        ("unsubscribe", "denied"),
    ]
