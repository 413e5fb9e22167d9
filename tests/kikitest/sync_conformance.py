"""The sync conformance suite: one set of checks, run against the device relay and the edge.

Each end's test module gives a :class:`SyncEndpoint` and runs every check of :data:`CHECKS`
against it (``PY_CHECKS`` with pycrdt clients only, tier integration; ``NODE_CHECKS`` with the
npm ``y-websocket`` clients too, tier interop). A check is
``async def check_<property>(ep, node=None)``: the endpoint, and for a Node check the shared
:class:`NodePeers`. Each check works in a fresh session of its own::

    @pytest.mark.parametrize("check", PY_CHECKS, ids=lambda c: c.__name__)
    async def test_conformance(endpoint, check): await check(endpoint)

Clients come from :mod:`kikitest.sync_fixtures`: :class:`YClient` (pycrdt) and
:class:`NodePeers` (``WebsocketProvider``; one process for the whole test session).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pycrdt import (
    Doc,
    Map,
    Text,
    create_awareness_message,
    create_sync_message,
    create_update_message,
    merge_updates,
)
from pycrdt._sync import Encoder
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from kikitest.sync_fixtures import TIMEOUT, NodePeers, YClient, eventually
from libkiki.sync.tokens import LEEWAY, SigningKey


class SyncEndpoint(Protocol):
    name: str  # "device" or "edge"

    def url(self, session: str, token: str | None) -> str:
        """``ws://HOST:PORT/session/<session>``, with ``?token=<token>`` unless ``None``."""
        ...

    def token(self, session: str, role: str, *, ttl: float = 3600, sub: str = "test") -> str:
        """A token this end accepts; ``ttl`` <= 0 gives one that expired ``-ttl`` s ago."""
        ...

    @property
    def key(self) -> SigningKey:
        """The key whose tokens this end accepts."""
        ...

    async def revoke(self, session: str, jti: str) -> None: ...

    async def restart(self, *, kill: bool) -> None:
        """SIGKILL (``kill``) or stop the end, then start it again (same address)."""
        ...


@dataclass
class Env:
    """What a check gets: the endpoint, a session of its own, and the Node clients if any."""

    ep: SyncEndpoint
    session: str
    node: NodePeers | None = None

    def url(self, role: str = "controller", ttl: float = 3600) -> str:
        return self.ep.url(self.session, self.ep.token(self.session, role, ttl=ttl))


Check = Callable[..., Awaitable[None]]
_names = itertools.count(1)
QUERY_AWARENESS = 3


def new_session(prefix: str = "conf") -> str:
    return f"{prefix}-{next(_names)}-{secrets.token_hex(3)}"


def base_and_room(url: str) -> tuple[str, str, str | None]:
    """Split a session URL into WebsocketProvider's server URL, room and token."""
    path, _, query = url.partition("?")
    base, _, room = path.rpartition("/")
    token = query.removeprefix("token=") if query.startswith("token=") else None
    return base, room, token


async def node_open(env: Env, client: str, role: str = "controller", **kw: object) -> None:
    assert env.node is not None
    base, room, token = base_and_room(env.url(role))
    await env.node.call("open", client=client, base=base, room=room, token=token, **kw)


# -- Python-only checks -----------------------------------------------------------------------


async def check_concurrent_edits_converge(ep: SyncEndpoint, node: NodePeers | None = None) -> None:
    env = Env(ep, new_session(), node)
    a, b = await YClient.join(env.url()), await YClient.join(env.url())
    try:
        for i in range(20):
            a.text.insert(0, "a")
            b.text.insert(len(b.text), "b")
            a.map[f"a{i}"] = i
            b.map[f"b{i}"] = i
            a.array.append(f"a{i}")
            b.array.append(f"b{i}")
        await eventually(lambda: a.state() == b.state() and len(a.map) == 40)
        assert str(a.text).count("a") == 20
        assert len(a.array) == 40
    finally:
        await a.close()
        await b.close()


async def check_late_joiner_gets_whole_state(
    ep: SyncEndpoint, node: NodePeers | None = None
) -> None:
    env = Env(ep, new_session(), node)
    a = await YClient.join(env.url())
    for i in range(50):
        a.map[str(i)] = "x" * i
    a.text += "hello"
    # Once a second client has it, it was relayed (and so durable).
    b = await YClient.join(env.url("observer"))
    await eventually(lambda: b.state() == a.state())
    await a.close()
    await b.close()
    late = await YClient.join(env.url("observer"))
    await eventually(lambda: late.state() == a.state())
    await late.close()


async def check_offline_edits_merge_on_reconnect(
    ep: SyncEndpoint, node: NodePeers | None = None
) -> None:
    env = Env(ep, new_session(), node)
    a, b = await YClient.join(env.url()), await YClient.join(env.url())
    a.map["both"] = "online"
    await eventually(lambda: b.map.get("both") == "online")
    await a.close()
    a.map["offline"] = "a"
    a.text += "from a "
    b.text += "from b "
    b.map["b"] = 1
    await a.connect(env.url())
    await eventually(lambda: a.state() == b.state() and "offline" in b.map and "b" in a.map)
    await a.close()
    await b.close()


async def check_awareness_appears_and_expires(
    ep: SyncEndpoint, node: NodePeers | None = None
) -> None:
    env = Env(ep, new_session(), node)
    a, b = await YClient.join(env.url()), await YClient.join(env.url())
    a.set_awareness({"user": "alice"})
    cid = a.awareness.client_id
    await eventually(lambda: b.awareness.states.get(cid) == {"user": "alice"})
    late = await YClient.join(env.url("observer"))
    await eventually(lambda: late.awareness.states.get(cid) == {"user": "alice"})
    await a.close()
    await eventually(lambda: cid not in b.awareness.states and cid not in late.awareness.states)
    await b.close()
    await late.close()


def awareness_message(entries: list[tuple[int, int, object]]) -> bytes:
    """An awareness message setting (client id, clock, state) for each entry."""
    encoder = Encoder()
    encoder.write_var_uint(len(entries))
    for client, clock, state in entries:
        encoder.write_var_uint(client)
        encoder.write_var_uint(clock)
        encoder.write_var_string(json.dumps(state))
    message: bytes = create_awareness_message(encoder.to_bytes())
    return message


async def check_awareness_states_are_bounded_per_client(
    ep: SyncEndpoint, node: NodePeers | None = None
) -> None:
    env = Env(ep, new_session(), node)
    greedy = await YClient.join(env.url())
    await greedy.send(awareness_message([(10_000 + i, 1, {"n": i}) for i in range(17)]))
    assert await greedy.closed() == 1013
    # Refused before any was held: a late joiner is told of the honest client's state only.
    honest = await YClient.join(env.url())
    honest.set_awareness({"user": "honest"})
    cid = honest.awareness.client_id
    late = await YClient.join(env.url("observer"))
    await eventually(lambda: cid in late.awareness.states)
    assert set(late.awareness.states) == {cid}
    for client in (honest, late):
        await client.close()


async def check_awareness_state_belongs_to_its_setter(
    ep: SyncEndpoint, node: NodePeers | None = None
) -> None:
    env = Env(ep, new_session(), node)
    alice, mallory = await YClient.join(env.url()), await YClient.join(env.url())
    alice.set_awareness({"user": "alice"})
    cid = alice.awareness.client_id
    await eventually(lambda: mallory.awareness.states.get(cid) == {"user": "alice"})
    # An echo of alice's state (what a stock client sends back) is no change: not refused.
    await mallory.send(alice.awareness_message())
    mallory.map["still"] = "here"
    watcher = await YClient.join(env.url("observer"))
    await eventually(lambda: watcher.map.get("still") == "here")
    await mallory.send(awareness_message([(cid, 99, {"user": "mallory"})]))
    assert await mallory.closed() == 1008
    late = await YClient.join(env.url("observer"))
    await eventually(lambda: cid in late.awareness.states)
    assert late.awareness.states[cid] == {"user": "alice"}
    assert watcher.awareness.states.get(cid) == {"user": "alice"}
    for client in (alice, watcher, late):
        await client.close()


async def check_a_removal_by_a_non_owner_is_dropped(
    ep: SyncEndpoint, node: NodePeers | None = None
) -> None:
    """A stock client times out a state it has not heard renewed for 30 s and sends that
    removal (a newer clock, no state): from anyone but the owner it is dropped, not applied,
    not relayed, and the sender stays joined; the rest of its message still counts."""
    env = Env(ep, new_session(), node)
    alice, bob = await YClient.join(env.url()), await YClient.join(env.url())
    reader = await YClient.join(env.url("observer"))
    alice.set_awareness({"user": "alice"})
    cid = alice.awareness.client_id
    await eventually(lambda: reader.awareness.states.get(cid) == {"user": "alice"})
    await reader.send(awareness_message([(cid, 99, None)]))
    await bob.send(awareness_message([(cid, 99, None)]))
    # Bob's own state beside a removal of alice's: his is taken, the removal dropped.
    await bob.send(awareness_message([(cid, 100, None), (77_777, 1, {"user": "bob"})]))
    await eventually(lambda: reader.awareness.states.get(77_777) == {"user": "bob"})
    bob.map["still"] = "here"
    await eventually(lambda: reader.map.get("still") == "here")
    assert reader.close_code is None
    assert bob.close_code is None
    late = await YClient.join(env.url("observer"))
    await eventually(lambda: {cid, 77_777} <= set(late.awareness.states))
    assert late.awareness.states[cid] == {"user": "alice"}
    assert reader.awareness.states.get(cid) == {"user": "alice"}
    # The owner's own removal still goes through.
    await alice.close()
    await eventually(lambda: cid not in late.awareness.states)
    for client in (bob, reader, late):
        await client.close()


async def _refused(url: str, *, first: str | None = None) -> int | None:
    client = await YClient.join(url, first=first, sync=False)
    return await client.closed()


async def check_observer_cannot_write(ep: SyncEndpoint, node: NodePeers | None = None) -> None:
    env = Env(ep, new_session(), node)
    writer = await YClient.join(env.url())
    observer = await YClient.join(env.url("observer"))
    writer.map["k"] = "v"
    await eventually(lambda: observer.map.get("k") == "v")
    observer.map["mine"] = "no"
    assert await observer.closed() == 1008
    aware = await YClient.join(env.url("observer"))
    aware.set_awareness({"me": 1})
    assert await aware.closed() == 1008
    writer.map["after"] = 1
    check = await YClient.join(env.url("observer"))
    await eventually(lambda: check.map.get("after") == 1)
    assert "mine" not in check.map
    for client in (writer, check):
        await client.close()


async def check_bad_tokens_are_refused(ep: SyncEndpoint, node: NodePeers | None = None) -> None:
    env = Env(ep, new_session(), node)
    ep, s = env.ep, env.session
    assert await _refused(ep.url(s, None)) == 1008  # none within the time allowed
    assert await _refused(ep.url(s, ep.token(s, "controller", ttl=-120))) == 1008
    assert await _refused(ep.url(s, ep.token("another-session", "controller"))) == 1008
    forged = SigningKey.generate().issue(s, "device", sub="mallory", iss="nobody")
    assert await _refused(ep.url(s, forged)) == 1008
    assert await _refused(ep.url(s, "not-a-jwt")) == 1008
    # The token may come as the first message instead.
    good = ep.token(s, "controller")
    client = await YClient.join(ep.url(s, None), first=f'{{"token": "{good}"}}')
    assert client.open
    await client.close()


async def check_no_token_in_time_is_refused(
    ep: SyncEndpoint, node: NodePeers | None = None
) -> None:
    """A socket that sends nothing at all is closed at the token deadline (5 s on both ends).
    The close frame is what is waited for: under workerd it arrives at 5 s, but the TCP
    connection of a socket that never sent anything ends only when the object is evicted
    (about 10 s later; edge/README.md), so neither ``recv()`` nor closing our end waits."""
    env = Env(ep, new_session(), node)
    ws = await connect(ep.url(env.session, None))
    try:
        # The end sends nothing before a token: the protocol reads the close frame meanwhile.
        with contextlib.suppress(TimeoutError):
            await eventually(lambda: ws.protocol.close_rcvd is not None, TIMEOUT)
        received = ws.protocol.close_rcvd
        assert received is not None, "the end never closed the socket"
        assert (received.code, received.reason) == (1008, "PermissionDenied: no token within 5 s")
    finally:
        ws.transport.abort()


async def _reply_to_step1(ws: ClientConnection) -> bytes:
    """Sends sync step 1 on ``ws``; the next message the end sends (its step 2, as the end
    answers in order, unless it sent something else first or closed)."""
    await ws.send(create_sync_message(Doc()))
    async with asyncio.timeout(TIMEOUT):
        reply = await ws.recv()
    assert isinstance(reply, bytes)
    return reply


async def check_binary_frames_before_the_token_are_dropped(
    ep: SyncEndpoint, node: NodePeers | None = None
) -> None:
    env = Env(ep, new_session(), node)
    donor: Doc[Map[Any]] = Doc()
    donor.get("map", type=Map)["early"] = 1
    async with connect(ep.url(env.session, None)) as ws:
        await ws.send(create_sync_message(donor))  # what a stock provider sends at once
        await ws.send(create_update_message(donor.get_update()))
        await ws.send(json.dumps({"token": ep.token(env.session, "controller")}))
        async with asyncio.timeout(TIMEOUT):
            hello = await ws.recv()
        assert isinstance(hello, bytes)
        assert hello[:2] == b"\x00\x00"  # the end's step 1: the token was taken
    writer = await YClient.join(env.url())
    writer.map["later"] = 2
    check = await YClient.join(env.url("observer"))
    await eventually(lambda: check.map.get("later") == 2)
    assert "early" not in check.map
    for client in (writer, check):
        await client.close()


async def check_a_token_without_kid_is_refused(
    ep: SyncEndpoint, node: NodePeers | None = None
) -> None:
    env = Env(ep, new_session(), node)
    import jwt

    good = ep.token(env.session, "controller")
    claims = jwt.decode(good, options={"verify_signature": False})
    bare = jwt.encode(claims, ep.key._private, algorithm="EdDSA")
    assert "kid" not in jwt.get_unverified_header(bare)
    client = await YClient.join(ep.url(env.session, bare), sync=False)
    assert await client.closed() == 1008
    assert client.close_reason == "PermissionDenied: token signed by an unknown key"


async def check_a_long_sub_is_refused(ep: SyncEndpoint, node: NodePeers | None = None) -> None:
    env = Env(ep, new_session(), node)
    ok = await YClient.join(ep.url(env.session, ep.token(env.session, "observer", sub="s" * 256)))
    await ok.close()
    long = ep.token(env.session, "observer", sub="s" * 257)
    client = await YClient.join(ep.url(env.session, long), sync=False)
    assert await client.closed() == 1008
    assert client.close_reason == "PermissionDenied: token sub or jti over 256 characters"


async def check_observer_updates_that_carry_nothing_are_dropped(
    ep: SyncEndpoint, node: NodePeers | None = None
) -> None:
    env = Env(ep, new_session(), node)
    async with connect(env.url("observer")) as ws:
        async with asyncio.timeout(TIMEOUT):
            await ws.recv()  # the end's step 1
        # Decoded, none carries a struct or a deleted range (trailing bytes; a deletion entry
        # for a client with no ranges).
        for nothing in (b"\x00\x00", b"\x00\x00\x00", b"\x00\x01\x05\x00"):
            await ws.send(create_update_message(nothing))
        reply = await _reply_to_step1(ws)
        assert reply[:2] == b"\x00\x01"
        await ws.send(create_update_message(b"\x00\x01\x05\x01\x00\x01"))  # deletes 5:0
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(TIMEOUT):
                await ws.recv()
        assert ws.protocol.close_rcvd is not None
        assert ws.protocol.close_rcvd.code == 1008


async def check_query_awareness_without_states_is_not_answered(
    ep: SyncEndpoint, node: NodePeers | None = None
) -> None:
    env = Env(ep, new_session(), node)
    async with connect(env.url("observer")) as ws:
        async with asyncio.timeout(TIMEOUT):
            await ws.recv()  # the end's step 1
        await ws.send(bytes([QUERY_AWARENESS]))
        assert (await _reply_to_step1(ws))[:2] == b"\x00\x01"
        writer = await YClient.join(env.url())
        writer.set_awareness({"user": "w"})
        await ws.send(bytes([QUERY_AWARENESS]))
        async with asyncio.timeout(TIMEOUT):
            while True:  # the writer's state may arrive first, relayed
                answer = await ws.recv()
                assert isinstance(answer, bytes)
                if answer[0] == 1:
                    break
        await writer.close()


async def check_revoked_token_is_refused_and_closed(
    ep: SyncEndpoint, node: NodePeers | None = None
) -> None:
    env = Env(ep, new_session(), node)
    import jwt

    token = env.ep.token(env.session, "controller")
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    live = await YClient.join(env.ep.url(env.session, token))
    await env.ep.revoke(env.session, jti)
    assert await live.closed() == 1008
    assert await _refused(env.ep.url(env.session, token)) == 1008


async def check_bad_messages_are_refused_without_harm(
    ep: SyncEndpoint, node: NodePeers | None = None
) -> None:
    env = Env(ep, new_session(), node)
    a, b = await YClient.join(env.url()), await YClient.join(env.url())
    a.map["before"] = 1
    await eventually(lambda: b.map.get("before") == 1)
    # Garbage bytes.
    bad = await YClient.join(env.url())
    await bad.send(b"\x00\x02\xff\xff\xff\xff\xff\x01")
    assert await bad.closed() == 1007
    # A well-formed message carrying a corrupt update (a real one, cut short).
    donor: Doc[Text] = Doc()
    donor.get("text", type=Text).insert(0, "x" * 100)
    update = donor.get_update()
    bad = await YClient.join(env.url())
    await bad.send(create_update_message(update[: len(update) // 2]))
    assert await bad.closed() == 1007
    # An unknown message type.
    bad = await YClient.join(env.url())
    await bad.send(b"\x07\x00")
    assert await bad.closed() == 1002
    # Over the size limit (1 MiB by default).
    bad = await YClient.join(env.url())
    await bad.send(create_update_message(b"\x00" * (2 << 20)))
    assert await bad.closed() == 1009
    # The others never noticed.
    assert a.open
    assert b.open
    a.map["after"] = 2
    await eventually(lambda: b.map.get("after") == 2)
    late = await YClient.join(env.url())
    await eventually(lambda: late.state() == a.state())
    assert "x" not in str(late.text)
    for client in (a, b, late):
        await client.close()


async def check_kill_mid_stream_loses_nothing_relayed(
    ep: SyncEndpoint, node: NodePeers | None = None
) -> None:
    env = Env(ep, new_session(), node)
    writer, reader = await YClient.join(env.url()), await YClient.join(env.url("observer"))

    async def write() -> None:
        for i in range(10_000):
            if not writer.open:
                return
            writer.map[f"k{i}"] = i
            await asyncio.sleep(0.001)

    task = asyncio.create_task(write())
    await eventually(lambda: len(reader.map) >= 50)
    await env.ep.restart(kill=True)
    await task
    seen = set(reader.map.keys())  # everything the relay sent before it died
    assert len(seen) >= 50
    after = await YClient.join(env.url("observer"))
    await eventually(lambda: seen <= set(after.map.keys()))
    for client in (writer, reader, after):
        await client.close()


async def check_parts_are_written_by_their_roles(
    ep: SyncEndpoint, node: NodePeers | None = None
) -> None:
    """The session document's parts (``libkiki.sync.parts``): ``device`` and ``results`` by
    the device role only, ``intents`` by controllers (and the device)."""
    env = Env(ep, new_session(), node)
    device = await YClient.join(env.url("device"))
    controller = await YClient.join(env.url("controller"))
    watcher = await YClient.join(env.url("observer"))
    device.doc.get("device", type=Map)["screen"] = "home"
    controller.doc.get("intents", type=Map)["i1"] = intent("i1")
    device.doc.get("results", type=Map)["i1"] = {"status": "ok"}

    def seen(client: YClient, root: str) -> dict[str, object]:
        value: dict[str, object] = client.doc.get(root, type=Map).to_py()
        return value

    await eventually(
        lambda: (
            seen(watcher, "device") == {"screen": "home"}
            and "i1" in seen(watcher, "intents")
            and "i1" in seen(watcher, "results")
            and "i1" in seen(device, "intents")
        )
    )
    for root in ("device", "results"):
        forger = await YClient.join(env.url("controller"))
        forger.doc.get(root, type=Map)["screen"] = "forged"
        assert await forger.closed() == 1008, root
    # The others never noticed, and the document holds nothing of it.
    assert all(c.open for c in (device, controller, watcher))
    controller.doc.get("intents", type=Map)["i2"] = intent("i2")
    await eventually(lambda: "i2" in seen(watcher, "intents"))
    late = await YClient.join(env.url("observer"))
    await eventually(lambda: "i2" in seen(late, "intents"))
    assert seen(late, "device") == {"screen": "home"}
    assert seen(late, "results") == {"i1": {"status": "ok"}}
    for client in (device, controller, watcher, late):
        await client.close()


def intent(key: str, by: str = "test") -> dict[str, object]:
    """An intent as a controller with token ``sub`` ``by`` writes it (the endpoints' tokens
    carry ``sub`` ``test`` unless asked otherwise)."""
    return {
        "id": key,
        "tool": "dev.kiki.demo.echo",
        "input": {"text": "hi"},
        "by": by,
        "createdAt": "2026-12-07T18:00:00Z",
    }


def _map(client: YClient, root: str) -> Map[Any]:
    part: Map[Any] = client.doc.get(root, type=Map)
    return part


async def check_controllers_only_add_intents_of_their_own(
    ep: SyncEndpoint, node: NodePeers | None = None
) -> None:
    """A controller adds new intents, each a JSON object whose ``by`` is its token's ``sub``;
    changing or deleting one (its own too), or naming someone else, closes it with 1008 and
    changes nothing. The device changes and prunes them."""
    env = Env(ep, new_session(), node)

    def controller_url(sub: str) -> str:
        return ep.url(env.session, ep.token(env.session, "controller", sub=sub))

    alice = await YClient.join(controller_url("alice"))
    watcher = await YClient.join(env.url("observer"))
    _map(alice, "intents")["a1"] = intent("a1", "alice")
    _map(alice, "intents")["a2"] = intent("a2", "alice")
    await eventually(lambda: set(_map(watcher, "intents").to_py() or {}) == {"a1", "a2"})
    refusals: list[tuple[str, Callable[[Map[Any]], None]]] = [
        ("change", lambda m: m.__setitem__("a1", {**intent("a1", "alice"), "tool": "x.y.z"})),
        ("delete", lambda m: m.pop("a1")),
        ("another by", lambda m: m.__setitem__("m1", intent("m1", "mallory"))),
        ("no by", lambda m: m.__setitem__("m2", {"id": "m2", "tool": "dev.kiki.demo.echo"})),
        ("not an object", lambda m: m.__setitem__("m3", "run dev.kiki.demo.echo")),
    ]
    for what, change in refusals:
        forger = await YClient.join(controller_url("alice"))
        change(_map(forger, "intents"))
        assert await forger.closed() == 1008, what
        if what == "another by":
            assert forger.close_reason == (
                "PermissionDenied: intent by mallory from a connection of alice"
            )
    # The others never noticed; the device may change and delete entries.
    assert alice.open
    assert watcher.open
    device = await YClient.join(env.url("device"))
    _map(device, "intents")["a2"] = {**intent("a2", "alice"), "tool": "dev.kiki.demo.other"}
    del _map(device, "intents")["a1"]
    _map(alice, "intents")["a3"] = intent("a3", "alice")
    await eventually(lambda: set(_map(watcher, "intents").to_py() or {}) == {"a2", "a3"})
    late = await YClient.join(env.url("observer"))
    await eventually(lambda: set(_map(late, "intents").to_py() or {}) == {"a2", "a3"})
    assert _map(late, "intents")["a2"]["tool"] == "dev.kiki.demo.other"
    assert _map(late, "intents")["a3"] == intent("a3", "alice")
    for client in (alice, watcher, device, late):
        await client.close()


async def check_yjs_client_ids_belong_to_their_writer(
    ep: SyncEndpoint, node: NodePeers | None = None
) -> None:
    """A Yjs client id belongs to the first writer of structs under it: a controller writing
    an intent (allowed) under the device's client id at the clock the device uses next is
    closed with 1008 and changes nothing, so the device's next write is not taken for a
    duplicate. A writer reconnecting with its document writes on under its id."""
    env = Env(ep, new_session(), node)

    def url(role: str, sub: str) -> str:
        return ep.url(env.session, ep.token(env.session, role, sub=sub))

    device = await YClient.join(url("device", "device:conf"))
    _map(device, "device")["tools"] = ["t"]
    watcher = await YClient.join(env.url("observer"))
    await eventually(lambda: _map(watcher, "device").to_py() == {"tools": ["t"]})
    forger = YClient(Doc(client_id=device.doc.client_id))
    await forger.connect(url("controller", "mallory"))
    _map(forger, "intents")["m1"] = intent("m1", "mallory")
    assert await forger.closed() == 1008
    assert forger.close_reason == (
        f"PermissionDenied: Yjs client {device.doc.client_id} belongs to another member"
    )
    assert device.open
    assert watcher.open
    _map(device, "device")["tools"] = ["t", "u"]
    await eventually(lambda: _map(watcher, "device").to_py() == {"tools": ["t", "u"]})
    alice = await YClient.join(url("controller", "alice"))
    _map(alice, "intents")["a1"] = intent("a1", "alice")
    await eventually(lambda: "a1" in (_map(watcher, "intents").to_py() or {}))
    await alice.close()
    await alice.connect(url("controller", "alice"))
    _map(alice, "intents")["a2"] = intent("a2", "alice")
    await eventually(lambda: "a2" in (_map(watcher, "intents").to_py() or {}))
    late = await YClient.join(env.url("observer"))
    await eventually(lambda: set(_map(late, "intents").to_py() or {}) == {"a1", "a2"})
    assert _map(late, "device").to_py() == {"tools": ["t", "u"]}
    for client in (device, watcher, alice, late):
        await client.close()


def _varuint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    out.append(n)
    return bytes(out)


def _skips_only(clients: list[int]) -> bytes:
    """A Yjs v1 update of one Skip struct (info 10, length 1) under each of ``clients``: it
    names them, as any struct does, and changes nothing."""
    groups = b"".join(
        _varuint(1) + _varuint(c) + _varuint(0) + b"\x0a" + _varuint(1) for c in clients
    )
    return _varuint(len(clients)) + groups + _varuint(0)


def _intents_under(clients: list[int], by: str) -> bytes:
    """One update adding an intent (by ``by``) under each Yjs client id of ``clients``."""
    return merge_updates(*(_one_intent(client, by) for client in clients))


def _one_intent(client: int, by: str) -> bytes:
    doc: Doc[Any] = Doc(client_id=client)
    doc.get("intents", type=Map)[f"i{client}"] = intent(f"i{client}", by)
    return doc.get_update()


async def check_a_device_writer_is_not_bound_to_yjs_client_ids(
    ep: SyncEndpoint, node: NodePeers | None = None
) -> None:
    """The device role may write every part, and each end decides who owns an id apart (the
    relay's owners are in memory): a device-role writer advancing an id a controller owns is
    accepted, or the relay<->edge link carrying it could be refused on every reconnect."""
    env = Env(ep, new_session(), node)
    alice = await YClient.join(ep.url(env.session, ep.token(env.session, "controller", sub="a")))
    _map(alice, "intents")["a1"] = intent("a1", "a")
    watcher = await YClient.join(env.url("observer"))
    await eventually(lambda: "a1" in (_map(watcher, "intents").to_py() or {}))
    device = YClient(Doc(client_id=alice.doc.client_id))
    await device.connect(ep.url(env.session, ep.token(env.session, "device", sub="device:c")))
    await eventually(lambda: "a1" in (_map(device, "intents").to_py() or {}))
    _map(device, "device")["tools"] = ["t"]
    await eventually(lambda: _map(watcher, "device").to_py() == {"tools": ["t"]})
    assert device.open
    for client in (alice, watcher, device):
        await client.close()


async def check_a_writer_owns_a_bounded_number_of_yjs_client_ids(
    ep: SyncEndpoint, node: NodePeers | None = None
) -> None:
    """A writer (not the device) owns at most 64 Yjs client ids: past them it is closed with
    1013. An update of Skip structs names ids but writes nothing under them: it claims none."""
    env = Env(ep, new_session(), node)
    base = 1_000_000 + secrets.randbelow(1_000_000)
    mallory = await YClient.join(ep.url(env.session, ep.token(env.session, "controller", sub="m")))
    await mallory.send(create_update_message(_skips_only(list(range(base - 10, base)))))
    await mallory.send(create_update_message(_intents_under(list(range(base, base + 64)), "m")))
    watcher = await YClient.join(env.url("observer"))
    await eventually(lambda: len(_map(watcher, "intents").to_py() or {}) == 64)
    assert mallory.open
    await mallory.send(create_update_message(_intents_under([base + 64], "m")))
    assert await mallory.closed() == 1013
    # The Skip structs claimed nothing (or the 64 would have been too many): another writer
    # writes under one of those ids.
    bob = YClient(Doc(client_id=base - 1))
    await bob.connect(ep.url(env.session, ep.token(env.session, "controller", sub="b")))
    _map(bob, "intents")["b1"] = intent("b1", "b")
    await eventually(lambda: "b1" in (_map(watcher, "intents").to_py() or {}))
    assert bob.open
    assert len(_map(watcher, "intents").to_py() or {}) == 65
    for client in (watcher, bob):
        await client.close()


async def check_expired_token_closes_live_connection(
    ep: SyncEndpoint, node: NodePeers | None = None
) -> None:
    """A connection lives no longer than its token: closed with 1008 once it expires. Both ends
    allow clocks :data:`LEEWAY` apart, so a token that expired ``LEEWAY - 3`` s ago joins and is
    closed about 3 s later."""
    env = Env(ep, new_session(), node)
    token = env.ep.token(env.session, "controller", ttl=-(LEEWAY - 3))
    short = await YClient.join(env.ep.url(env.session, token))
    other = await YClient.join(env.url())
    short.map["before"] = 1
    await eventually(lambda: other.map.get("before") == 1)
    assert await short.closed() == 1008
    assert "expired" in short.close_reason
    assert other.open
    await other.close()


# -- checks with Node's y-websocket clients ---------------------------------------------------


async def check_node_and_python_converge(ep: SyncEndpoint, node: NodePeers | None = None) -> None:
    env = Env(ep, new_session(), node)
    assert env.node is not None
    n = f"n-{env.session}"
    await node_open(env, n)
    py = await YClient.join(env.url())
    try:
        for i in range(10):
            await env.node.call("edit", client=n, kind="text", index=0, value="n")
            await env.node.call("edit", client=n, kind="map", key=f"n{i}", value=i)
            await env.node.call("edit", client=n, kind="array", index=0, value=f"n{i}")
            py.text += "p"
            py.map[f"p{i}"] = i
            py.array.append(f"p{i}")

        async def same() -> bool:
            assert env.node is not None
            state = await env.node.call("state", client=n)
            return bool(state == py.state() and len(py.map) == 20)

        async with asyncio.timeout(15):
            while not await same():  # noqa: ASYNC110 -- the Node client's state is polled
                await asyncio.sleep(0.05)
    finally:
        await env.node.call("destroy", client=n)
        await py.close()


async def check_node_offline_edits_and_late_join(
    ep: SyncEndpoint, node: NodePeers | None = None
) -> None:
    env = Env(ep, new_session(), node)
    assert env.node is not None
    n, late = f"n-{env.session}", f"late-{env.session}"
    await node_open(env, n)
    py = await YClient.join(env.url())
    await env.node.call("disconnect", client=n)
    await env.node.call("edit", client=n, kind="map", key="offline", value="node")
    py.map["online"] = "py"
    await env.node.call("connect", client=n)
    await eventually(lambda: py.map.get("offline") == "node")
    await node_open(env, late, "observer")
    state = await env.node.call("state", client=late)
    assert state["map"] == {"offline": "node", "online": "py"}
    for c in (n, late):
        await env.node.call("destroy", client=c)
    await py.close()


async def check_node_awareness_and_observer(
    ep: SyncEndpoint, node: NodePeers | None = None
) -> None:
    env = Env(ep, new_session(), node)
    assert env.node is not None
    n, obs = f"n-{env.session}", f"obs-{env.session}"
    py = await YClient.join(env.url())
    await node_open(env, n, presence={"user": "node"})
    await eventually(lambda: {"user": "node"} in py.awareness.states.values())
    await node_open(env, obs, "observer")
    # Opened means synced; the awareness states the relay sent on join may come just after.
    async with asyncio.timeout(15):
        while {"user": "node"} not in await env.node.call("others", client=obs):  # noqa: ASYNC110 -- polled, as above
            await asyncio.sleep(0.02)
    await env.node.call("destroy", client=n)
    await eventually(lambda: {"user": "node"} not in py.awareness.states.values())
    # The stock observer reads; the first thing it writes closes it.
    await env.node.call("edit", client=obs, kind="map", key="x", value=1)

    def closed() -> bool:
        assert env.node is not None
        return env.node.close_code(obs) == 1008

    await eventually(closed)
    await env.node.call("destroy", client=obs)
    assert "x" not in py.map
    await py.close()


PY_CHECKS: list[Check] = [
    check_concurrent_edits_converge,
    check_late_joiner_gets_whole_state,
    check_offline_edits_merge_on_reconnect,
    check_awareness_appears_and_expires,
    check_awareness_states_are_bounded_per_client,
    check_awareness_state_belongs_to_its_setter,
    check_a_removal_by_a_non_owner_is_dropped,
    check_observer_cannot_write,
    check_bad_tokens_are_refused,
    check_no_token_in_time_is_refused,
    check_binary_frames_before_the_token_are_dropped,
    check_a_token_without_kid_is_refused,
    check_a_long_sub_is_refused,
    check_observer_updates_that_carry_nothing_are_dropped,
    check_query_awareness_without_states_is_not_answered,
    check_revoked_token_is_refused_and_closed,
    check_bad_messages_are_refused_without_harm,
    check_kill_mid_stream_loses_nothing_relayed,
    check_parts_are_written_by_their_roles,
    check_controllers_only_add_intents_of_their_own,
    check_yjs_client_ids_belong_to_their_writer,
    check_a_device_writer_is_not_bound_to_yjs_client_ids,
    check_a_writer_owns_a_bounded_number_of_yjs_client_ids,
    check_expired_token_closes_live_connection,
]
NODE_CHECKS: list[Check] = [
    check_node_and_python_converge,
    check_node_offline_edits_and_late_join,
    check_node_awareness_and_observer,
]
CHECKS: list[Check] = PY_CHECKS + NODE_CHECKS
