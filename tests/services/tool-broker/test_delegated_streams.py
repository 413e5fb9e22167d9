"""A trusted delegate's subscriptions for remote people are decided again whenever the broker
re-decides the subscriptions it holds: on a policy reload, and when a waiting topic reopens on a
provider. A relay the policy no longer trusts speaks for nobody, and a person the policy no
longer allows is not kept subscribed by the relay's own rights. The broker runs in this process
(root, the relay, is the test process) on a real socket, so that the policy can change without
the reload's sweep, as it stands when a topic reopens."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kiki_tool_broker.audit import AuditLog
from kiki_tool_broker.config import BrokerConfig
from kiki_tool_broker.core import BrokerCore
from kiki_tool_broker.policy import Policy
from kiki_tool_broker.schemas import Catalog
from kiki_tool_broker.server import Broker
from kikitest.broker_fixtures import RawPeer, RpcFailed
from kikitest.broker_lexicons import TICKS, TICKS_LEXICON
from libkiki.audit import read_entries
from libkiki.rpc import serve_unix
from libkiki.service import ServiceContext
from libkiki.sockets import Listeners
from libkiki.systemd import Notifier
from libkiki.tools import ON_BEHALF_OF_META

pytestmark = pytest.mark.integration

DELEGATE = '[[delegate]]\nprincipals = ["uid:0"]\n'
ALICE_MAY = (
    f'[[allow]]\nprincipals = ["remote:alice"]\ntools = ["{TICKS}"]\naccess = ["subscribe"]\n'
)
ALICE = {"subject": "alice"}
# What the operator changes, and what the relay's subscription for alice is then told.
CHANGES = {
    "delegate removed": (ALICE_MAY, "uid=0 pid="),
    "alice's allow removed": (DELEGATE, "a remote caller needs an allow rule naming remote:"),
}


@dataclass
class Running:
    path: Path
    core: BrokerCore
    broker: Broker
    audit: AuditLog
    policy_file: Path

    def change_policy(self, text: str, *, sweep: bool) -> None:
        """The policy file changes; ``sweep``: and is reloaded (``systemctl reload``), else the
        broker only decides by it from now on (as when a topic reopens)."""
        self.policy_file.write_text(text)
        self.core.policy = Policy.load(self.policy_file)
        if sweep:
            self.broker.streams.policy_reloaded()

    def lines(self) -> list[tuple[str, str, str | None, Any]]:
        return [
            (e["event"], e["outcome"], e.get("reason"), e.get("onBehalfOf"))
            for e in read_entries(self.audit.path)
            if e["tool"] == TICKS
        ]


@asynccontextmanager
async def running(sockdir: Path, tmp_path: Path) -> AsyncIterator[Running]:
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(DELEGATE + ALICE_MAY)
    config = BrokerConfig(call_timeout=5)
    ctx = ServiceContext("tool-broker", "0", Listeners([]), Notifier(""), config)
    core = BrokerCore(config, Catalog.load(), Policy.load(policy_file), version="0")
    audit = AuditLog(tmp_path)
    broker = Broker(ctx, core, audit)
    core.register_own(broker.tools.names)
    path = sockdir / "tools.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        sock.listen()
        async with serve_unix(sock, broker.methods, on_disconnect=broker.connection_lost):
            yield Running(path, core, broker, audit, policy_file)
        await broker.forwarder.finish()
    audit.close()


async def provider(path: Path) -> RawPeer:
    peer = await RawPeer.open(path)
    params = {"tools": [], "subscriptions": [TICKS], "lexicons": [TICKS_LEXICON]}
    assert (await peer.request("kiki/registerTools", params))["subscriptions"] == [TICKS]
    return peer


async def accept_open(peer: RawPeer) -> int:
    rid, method, got = await peer.requests.get()
    assert (method, got["params"]) == ("kiki/openStream", {"room": "a"})
    peer.answer(rid)
    stream: int = got["stream"]
    return stream


async def subscribe(peer: RawPeer, behalf: dict[str, Any] | None = None) -> int:
    params: dict[str, Any] = {"nsid": TICKS, "params": {"room": "a"}}
    if behalf is not None:
        params["_meta"] = {ON_BEHALF_OF_META: behalf}
    sub: int = (await peer.request("kiki/subscribe", params))["subscription"]
    return sub


async def next_for(peer: RawPeer, sub: int, method: str) -> dict[str, Any]:
    """The next ``method`` notification for ``sub`` (others are stepped over)."""
    while True:
        got, params = await peer.notes.get()
        if got == method and params["subscription"] == sub:
            return params


@pytest.mark.parametrize("change", CHANGES)
async def test_a_reload_ends_a_delegated_subscription_it_no_longer_allows(
    sockdir: Path, tmp_path: Path, change: str
) -> None:
    policy, told = CHANGES[change]
    async with (
        asyncio.timeout(20),
        running(sockdir, tmp_path) as broker,
        await provider(broker.path) as prov,
        await RawPeer.open(broker.path) as relay,
    ):
        for_alice = await subscribe(relay, ALICE)
        stream = await accept_open(prov)
        own = await subscribe(relay)  # the relay for itself: root's defaults
        broker.change_policy(policy, sweep=True)
        ended = await next_for(relay, for_alice, "kiki/ended")
        assert ended["reason"] == "denied"
        assert told in ended["message"]
        # The relay's own subscription, on the same upstream, goes on.
        prov.notify("kiki/emit", {"stream": stream, "message": {"n": 1}})
        event = await next_for(relay, own, "kiki/event")
        assert event["message"] == {"n": 1}
    assert broker.lines() == [
        ("subscribe", "ok", None, ALICE),
        ("subscribe", "ok", None, None),
        ("unsubscribe", "ok", "denied", ALICE),
        ("unsubscribe", "ok", "closed", None),  # the relay left
    ]


@pytest.mark.parametrize("change", CHANGES)
async def test_a_reopened_topic_ends_a_delegated_subscription_the_policy_no_longer_allows(
    sockdir: Path, tmp_path: Path, change: str
) -> None:
    policy, told = CHANGES[change]
    async with (
        asyncio.timeout(20),
        running(sockdir, tmp_path) as broker,
        await RawPeer.open(broker.path) as relay,
    ):
        async with await provider(broker.path) as prov:
            for_alice = await subscribe(relay, ALICE)
            await accept_open(prov)
        status = await next_for(relay, for_alice, "kiki/streamStatus")
        while status["state"] != "waiting":  # its provider left: it waits for another
            status = await next_for(relay, for_alice, "kiki/streamStatus")
        broker.change_policy(policy, sweep=False)
        async with await provider(broker.path) as again:
            ended = await next_for(relay, for_alice, "kiki/ended")
            assert ended["reason"] == "denied"
            assert told in ended["message"]
            assert again.requests.empty()  # nobody left to open the topic for
    assert broker.lines() == [
        ("subscribe", "ok", None, ALICE),
        ("unsubscribe", "ok", "denied", ALICE),
    ]


async def resources_subscribe(peer: RawPeer, behalf: dict[str, Any] | None = None) -> None:
    params: dict[str, Any] = {"uri": f"kiki-stream://{TICKS}?room=a"}
    if behalf is not None:
        params["_meta"] = {ON_BEHALF_OF_META: behalf}
    await peer.request("resources/subscribe", params)


async def test_an_mcp_subscribe_of_a_uri_held_for_one_person_is_decided_for_the_next(
    sockdir: Path, tmp_path: Path
) -> None:
    async with (
        asyncio.timeout(20),
        running(sockdir, tmp_path) as broker,
        await provider(broker.path) as prov,
        await RawPeer.open(broker.path) as relay,
    ):
        await resources_subscribe(relay, ALICE)
        await accept_open(prov)
        await resources_subscribe(relay, ALICE)  # again, for the same person: nothing to do
        # Bob has no rule: refused as a kiki/subscribe for him is, not let through on alice's.
        with pytest.raises(RpcFailed) as info:
            await resources_subscribe(relay, {"subject": "bob"})
        assert info.value.code == -32003
        assert "remote:bob" in str(info.value)
        # The relay for itself may subscribe, but the URI is alice's on this connection.
        with pytest.raises(RpcFailed) as info:
            await resources_subscribe(relay)
        assert info.value.code == -32009
        assert prov.requests.empty()  # one upstream, alice's
    assert broker.lines() == [
        ("subscribe", "ok", None, ALICE),
        ("subscribe", "denied", None, {"subject": "bob"}),
        ("subscribe", "error", None, None),
        ("unsubscribe", "ok", "closed", ALICE),
    ]


async def test_an_mcp_subscribe_claiming_a_person_from_an_untrusted_peer_is_refused(
    sockdir: Path, tmp_path: Path
) -> None:
    async with (
        asyncio.timeout(20),
        running(sockdir, tmp_path) as broker,
        await provider(broker.path) as prov,
        await RawPeer.open(broker.path) as peer,
    ):
        broker.change_policy(ALICE_MAY, sweep=True)  # root is nobody's relay now
        await resources_subscribe(peer)  # for itself: root's defaults
        await accept_open(prov)
        with pytest.raises(RpcFailed) as info:
            await resources_subscribe(peer, ALICE)
        assert info.value.code == -32003
        assert "not a trusted delegate" in str(info.value)
    assert broker.lines() == [
        ("subscribe", "ok", None, None),
        ("subscribe", "denied", None, None),  # its claim was nobody's word: no onBehalfOf
        ("unsubscribe", "ok", "closed", None),
    ]
