"""The edge Worker under ``workerd``: what the conformance suite does not cover.

Hibernation (the object evicted while its sockets stay open, then rebuilt from storage and the
sockets' attachments), compaction and a SIGKILL of workerd, the revocation endpoint, token
checks beyond the suite's, the routes, the client limit, and pycrdt's own ``Provider`` as a
stock client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pycrdt import (
    Array,
    Awareness,
    Doc,
    Map,
    Provider,
    Text,
    create_awareness_message,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from kikitest.edge_fixtures import ISSUER, EdgeServer, edge_server
from kikitest.sync_fixtures import YClient, eventually
from libkiki.sync.tokens import SigningKey

pytestmark = pytest.mark.interop

# workerd evicts an object whose only activity is hibernatable sockets after about 10 s idle.
IDLE = 11.0

PRIVATE = Ed25519PrivateKey.generate()
KEY = SigningKey(PRIVATE)


@pytest.fixture(scope="module")
def edge() -> Iterator[EdgeServer]:
    with edge_server(KEY) as server:
        yield server


@pytest.fixture(scope="module")
def tight() -> Iterator[EdgeServer]:
    """An edge with small limits: two clients a session (three more waiting for their token),
    messages of 4 KiB, compaction every
    20 log rows, 5 messages/s a client (20 at once), documents of 8000 bytes."""
    with edge_server(
        KIKI_MAX_CLIENTS="2",
        KIKI_MAX_PENDING_CLIENTS="3",
        KIKI_MAX_MESSAGE="4096",
        KIKI_COMPACT_ROWS="20",
        KIKI_RATE="5",
        KIKI_BURST="20",
        KIKI_MAX_DOCUMENT="8000",
    ) as server:
        yield server


_names = iter(range(1, 1_000_000))


def session() -> str:
    return f"edge-{next(_names)}-{time.monotonic_ns() % 1_000_000}"


def claims(name: str, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": "kiki-sync",
        "sid": name,
        "sub": "test",
        "role": "controller",
        "iat": now,
        "exp": now + 600,
        "jti": f"jti-{time.monotonic_ns()}",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def signed(payload: dict[str, Any]) -> str:
    return jwt.encode(payload, PRIVATE, algorithm="EdDSA", headers={"kid": KEY.kid})


async def refused(url: str, *, first: str | None = None) -> tuple[int | None, str]:
    client = await YClient.join(url, first=first, sync=False)
    code = await client.closed()
    return code, client.close_reason


# -- hibernation, compaction, SIGKILL ---------------------------------------------------------


async def test_hibernated_object_keeps_its_sockets_roles_and_awareness(edge: EdgeServer) -> None:
    name = session()
    writer = await YClient.join(edge.url(name, edge.token(name, "controller")))
    reader = await YClient.join(edge.url(name, edge.token(name, "observer")))
    writer.set_awareness({"user": "writer"})
    cid = writer.awareness.client_id
    writer.map["before"] = 1
    await eventually(
        lambda: reader.map.get("before") == 1 and reader.awareness.states.get(cid) is not None
    )
    assert edge.info(name)["boots"] == 1
    # Idle: nothing reaches the object, so workerd evicts it (the info request wakes it again).
    for _ in range(3):
        await asyncio.sleep(IDLE)
        if edge.info(name)["boots"] > 1:
            break
    assert edge.info(name)["boots"] == 2, "the object was never hibernated"
    # The sockets stayed open through it, and each is still who it was.
    writer.map["after"] = 2
    await eventually(lambda: reader.map.get("after") == 2)
    reader.map["mine"] = "no"
    code = await reader.closed()
    assert code == 1008
    # A late joiner gets the document and the awareness the object had before it slept.
    late = await YClient.join(edge.url(name, edge.token(name, "controller")))
    await eventually(
        lambda: (
            late.map.to_py() == {"before": 1, "after": 2}
            and late.awareness.states.get(cid) == {"user": "writer"}
        )
    )
    await writer.close()
    await eventually(lambda: cid not in late.awareness.states)
    await late.close()


async def test_compacted_log_and_sigkill_lose_nothing(tight: EdgeServer) -> None:
    name = session()
    writer = await YClient.join(tight.url(name, tight.token(name, "device")))
    reader = await YClient.join(tight.url(name, tight.token(name, "observer")))
    for i in range(50):
        writer.map[f"k{i}"] = i
        await asyncio.sleep(0.002)  # one update per message, so the log grows row by row
    await eventually(lambda: len(reader.map) == 50)

    def compacted() -> bool:
        info = tight.info(name)
        return bool(info["snapshotBytes"] > 0 and info["log"]["rows"] < 20)

    await eventually(compacted)
    await tight.restart(kill=True)
    for client in (writer, reader):
        await client.closed()
    after = await YClient.join(tight.url(name, tight.token(name, "observer")))
    await eventually(lambda: after.map.to_py() == {f"k{i}": i for i in range(50)})
    assert tight.info(name)["boots"] == 2
    await after.close()


async def test_clients_beyond_the_limit_are_refused(tight: EdgeServer) -> None:
    name = session()
    a = await YClient.join(tight.url(name, tight.token(name, "controller")))
    b = await YClient.join(tight.url(name, tight.token(name, "controller")))
    code, reason = await refused(tight.url(name, tight.token(name, "controller")))
    assert code == 1013
    assert reason.startswith("LimitExceeded: ")
    await a.close()
    # A place is free again once a client has gone.
    c = await YClient.join(tight.url(name, tight.token(name, "controller")))
    for client in (b, c):
        await client.close()


async def test_sockets_without_a_token_do_not_keep_clients_out(tight: EdgeServer) -> None:
    name = session()
    async with contextlib.AsyncExitStack() as stack:
        waiting = [
            await stack.enter_async_context(connect(tight.url(name, None))) for _ in range(3)
        ]
        code, reason = await refused(tight.url(name, None))
        assert (code, reason) == (
            1013,
            "LimitExceeded: the session has 3 sockets waiting for their token already",
        )
        a = await YClient.join(tight.url(name, tight.token(name, "controller")))
        b = await YClient.join(tight.url(name, tight.token(name, "controller")))
        # The session is full: a waiting socket's token is refused when it comes.
        await waiting[0].send(json.dumps({"token": tight.token(name, "controller")}))
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(10):
                await waiting[0].recv()
        assert waiting[0].close_code == 1013
        assert waiting[0].close_reason == "LimitExceeded: the session has 2 clients already"
        for client in (a, b):
            await client.close()


async def test_a_message_over_the_limit_is_refused_and_the_session_goes_on(
    tight: EdgeServer,
) -> None:
    name = session()
    writer = await YClient.join(tight.url(name, tight.token(name, "controller")))
    writer.text += "x" * 5000
    assert await writer.closed() == 1009
    assert writer.close_reason.startswith("FrameTooLarge: message of ")
    check = await YClient.join(tight.url(name, tight.token(name, "controller")))
    check.text += "small"
    other = await YClient.join(tight.url(name, tight.token(name, "observer")))
    await eventually(lambda: str(other.text) == "small")
    for client in (check, other):
        await client.close()


async def test_a_client_over_the_rate_is_refused_but_not_the_device(tight: EdgeServer) -> None:
    name = session()
    device = await YClient.join(tight.url(name, tight.token(name, "device")))
    fast = await YClient.join(tight.url(name, tight.token(name, "controller")))
    for i in range(40):
        fast.map[f"f{i}"] = i
        device.map[f"d{i}"] = i
    assert await fast.closed() == 1013
    assert fast.close_reason.startswith("LimitExceeded: over 5 messages/s")
    check = await YClient.join(tight.url(name, tight.token(name, "observer")))
    await eventually(lambda: all(f"d{i}" in check.map for i in range(40)))
    assert device.open
    for client in (device, check):
        await client.close()


async def test_a_full_document_refuses_more(tight: EdgeServer) -> None:
    name = session()
    writer = await YClient.join(tight.url(name, tight.token(name, "device")))
    for i in range(3):
        writer.map[f"k{i}"] = "x" * 3000
    assert await writer.closed() == 1013
    assert writer.close_reason.startswith("LimitExceeded: the session document is full")
    check = await YClient.join(tight.url(name, tight.token(name, "observer")))
    assert sorted(check.map.keys()) == ["k0", "k1"]
    await check.close()


async def test_one_client_owns_at_most_16_awareness_states(edge: EdgeServer) -> None:
    name = session()
    collected = Awareness(Doc())
    for _ in range(17):
        one = Awareness(Doc())
        one.set_local_state({"cursor": 1})
        collected.apply_awareness_update(one.encode_awareness_update([one.client_id]), "test")
    ids = [i for i in collected.states if i != collected.client_id]
    client = await YClient.join(edge.url(name, edge.token(name, "controller")))
    await client.send(create_awareness_message(collected.encode_awareness_update(ids[:16])))
    await client.send(create_awareness_message(collected.encode_awareness_update(ids)))
    assert await client.closed() == 1013
    assert client.close_reason == "LimitExceeded: too many awareness states from one client"


# -- intents (beyond the conformance suite's) ---------------------------------------------------


async def test_intents_of_another_shape_are_refused_as_the_device_words_it(
    edge: EdgeServer,
) -> None:
    """A controller's intent as a shared type, or the intents part written as an array, closes
    it with the device relay's reasons (libkiki.sync.parts) and leaves the document as it was."""
    name = session()
    mine = {"id": "i", "tool": "dev.kiki.demo.echo", "by": "test"}
    as_array = await YClient.join(edge.url(name, edge.token(name, "controller")))
    as_array.doc.get("intents", type=Array).append(mine)
    assert await as_array.closed() == 1008
    assert (
        as_array.close_reason == "PermissionDenied: the session's intents written as another type"
    )
    nested = await YClient.join(edge.url(name, edge.token(name, "controller")))
    nested.doc.get("intents", type=Map)["i"] = Map(mine)
    assert await nested.closed() == 1008
    assert nested.close_reason == "PermissionDenied: intent i is not a JSON object"
    fine = await YClient.join(edge.url(name, edge.token(name, "controller")))
    fine.doc.get("intents", type=Map)["i"] = mine
    late = await YClient.join(edge.url(name, edge.token(name, "observer")))
    await eventually(lambda: late.doc.get("intents", type=Map).to_py() == {"i": mine})
    for client in (fine, late):
        await client.close()


# -- revocation endpoint -----------------------------------------------------------------------


async def test_revoke_closes_only_the_sockets_holding_the_token(edge: EdgeServer) -> None:
    name = session()
    token = edge.token(name, "controller")
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    first = await YClient.join(edge.url(name, token))
    second = await YClient.join(edge.url(name, token))
    other = await YClient.join(edge.url(name, edge.token(name, "controller")))
    status, answer = await asyncio.to_thread(
        edge.request, "POST", f"/session/{name}/revoke", {"jti": jti}, edge.token(name, "device")
    )
    assert (status, answer) == (200, {"revoked": jti, "closed": 2})
    for client in (first, second):
        assert await client.closed() == 1008
        assert client.close_reason == "PermissionDenied: token revoked"
    assert other.open
    await other.close()
    # Kept in the object's storage: refused after workerd was killed too.
    await edge.restart(kill=True)
    assert await refused(edge.url(name, token)) == (1008, "PermissionDenied: token revoked")


async def test_revocations_are_kept_until_their_tokens_expire(edge: EdgeServer) -> None:
    name = session()
    device = edge.token(name, "device")
    now = int(time.time())
    live = edge.token(name, "controller")
    live_jti = jwt.decode(live, options={"verify_signature": False})["jti"]
    for jti, exp in ((live_jti, now + 3600), ("long-dead", now - 60), ("no-exp", None)):
        body = {"jti": jti} if exp is None else {"jti": jti, "exp": exp}
        status, _ = await asyncio.to_thread(
            edge.request, "POST", f"/session/{name}/revoke", body, device
        )
        assert status == 200
    # The token expired beyond the leeway is pruned by the alarm; the others stay.
    await eventually(lambda: edge.info(name)["revoked"] == 2)
    assert await refused(edge.url(name, live)) == (1008, "PermissionDenied: token revoked")
    status, _ = await asyncio.to_thread(
        edge.request, "POST", f"/session/{name}/revoke", {"jti": "x", "exp": "soon"}, device
    )
    assert status == 400


@pytest.mark.parametrize(
    ("role", "body", "status"),
    [
        (None, {"jti": "x"}, 403),
        ("observer", {"jti": "x"}, 403),
        ("controller", {"jti": "x"}, 403),
        ("device", {"id": "x"}, 400),
        ("device", "not an object", 400),
    ],
)
def test_revoke_needs_a_device_token_and_a_jti(
    edge: EdgeServer, role: str | None, body: Any, status: int
) -> None:
    name = session()
    token = None if role is None else edge.token(name, role)
    assert edge.request("POST", f"/session/{name}/revoke", body, token)[0] == status


def test_revoke_with_another_sessions_device_token_is_refused(edge: EdgeServer) -> None:
    status, answer = edge.request(
        "POST", f"/session/{session()}/revoke", {"jti": "x"}, edge.token(session(), "device")
    )
    assert status == 403
    assert answer == {"error": "PermissionDenied: token is for another session"}


# -- tokens ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"aud": "elsewhere"}, "token claim refused"),
        ({"role": "admin"}, "token role"),
        ({"jti": None}, "token claim refused"),
        ({"exp": None}, "token claim refused"),
        ({"iat": int(time.time()) + 3600}, "token issued in the future"),
        ({"sub": "x" * 257}, "token sub or jti over 256 characters"),
    ],
)
async def test_tokens_with_bad_claims_are_refused(
    edge: EdgeServer, change: dict[str, Any], why: str
) -> None:
    name = session()
    code, reason = await refused(edge.url(name, signed(claims(name, **change))))
    assert code == 1008
    assert reason.startswith(f"PermissionDenied: {why}")


async def test_a_token_not_signed_eddsa_is_refused(edge: EdgeServer) -> None:
    name = session()
    hs = jwt.encode(claims(name), "shared-secret-of-32-bytes-or-more!", algorithm="HS256")
    code, reason = await refused(edge.url(name, hs))
    assert (code, reason) == (1008, "PermissionDenied: token algorithm is not EdDSA")


async def test_a_first_message_that_is_not_a_token_is_refused(edge: EdgeServer) -> None:
    name = session()
    code, reason = await refused(edge.url(name, None), first="hello")
    assert code == 1008
    assert "the first message must be" in reason


async def test_a_text_frame_after_the_token_is_a_protocol_error(edge: EdgeServer) -> None:
    name = session()
    client = await YClient.join(edge.url(name, edge.token(name, "controller")))
    await client.send("text")
    assert await client.closed() == 1002


# The token deadline (KIKI_AUTH_TIMEOUT_MS, 5 s by default) and the slack a loaded machine gets.
AUTH_TIMEOUT = 5.0
SLACK = 4.0


async def test_a_socket_that_sends_nothing_is_told_at_the_token_deadline(
    edge: EdgeServer,
) -> None:
    """The close frame (1008, no token within 5 s) reaches a socket that sends nothing at the
    deadline, from the object's alarm: not before it, and well before the object is evicted.
    The TCP connection itself ends later under workerd: a hibernatable socket that never
    delivered a frame to the object is released only when the object is next evicted (about
    :data:`IDLE` after its last event), so a client waiting for the connection's end rather
    than the close frame sees about 15 s (README, "Tokens")."""
    started = time.monotonic()
    async with connect(edge.url(session(), None)) as ws:
        async with asyncio.timeout(AUTH_TIMEOUT + SLACK):
            while ws.protocol.close_rcvd is None:  # noqa: ASYNC110  (the frame has no event)
                await asyncio.sleep(0.05)
        told = time.monotonic() - started
        received = ws.protocol.close_rcvd
        assert (received.code, received.reason) == (1008, "PermissionDenied: no token within 5 s")
        assert told >= AUTH_TIMEOUT - 0.5, f"closed {told:.1f} s after connecting"
        # And the connection does end, by the object's eviction at the latest.
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(IDLE + SLACK):
                await ws.recv()


def test_info_needs_a_device_token(edge: EdgeServer) -> None:
    name = session()
    assert (
        edge.request("GET", f"/session/{name}/info", token=edge.token(name, "observer"))[0] == 403
    )
    assert edge.info(name)["clients"] == {"open": 0, "pending": 0}


# -- routes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/healthz", 200),
        ("GET", "/", 404),
        ("GET", "/session/", 404),
        ("GET", "/session/a%20b", 404),
        ("GET", "/session/" + "x" * 65, 404),
        ("GET", "/session/ok", 426),  # not a WebSocket upgrade
        ("POST", "/session/ok", 405),
        ("GET", "/session/ok/revoke", 405),
        ("GET", "/session/ok/other", 404),
    ],
)
def test_routes(edge: EdgeServer, method: str, path: str, status: int) -> None:
    assert edge.request(method, path)[0] == status


# -- pycrdt's Provider -------------------------------------------------------------------------


class Channel:
    """pycrdt's ``Channel`` over a websockets client connection."""

    def __init__(self, ws: ClientConnection, path: str) -> None:
        self.ws = ws
        self._path = path

    @property
    def path(self) -> str:
        return self._path

    def __aiter__(self) -> Channel:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except ConnectionClosed:
            raise StopAsyncIteration() from None

    async def send(self, message: bytes) -> None:
        await self.ws.send(message)

    async def recv(self) -> bytes:
        message = await self.ws.recv()
        assert isinstance(message, bytes)
        return message


async def test_pycrdt_providers_sync_through_the_object(edge: EdgeServer) -> None:
    name = session()
    one: Doc[Text] = Doc()
    two: Doc[Text] = Doc()
    one.get("text", type=Text).insert(0, "one ")
    async with contextlib.AsyncExitStack() as stack:
        for doc in (one, two):
            url = edge.url(name, edge.token(name, "controller"))
            ws = await stack.enter_async_context(connect(url))
            provider = await stack.enter_async_context(Provider(doc, Channel(ws, url)))
            await asyncio.wait_for(provider.synced.wait(), 15)
        two.get("text", type=Text).insert(0, "two ")
        await eventually(
            lambda: (
                str(one.get("text", type=Text)) == str(two.get("text", type=Text))
                and len(str(two.get("text", type=Text))) == 8
            )
        )
