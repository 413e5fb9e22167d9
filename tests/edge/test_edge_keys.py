"""A session at the edge belongs to the key that signs its tokens: an edge trusting two
devices' keys keeps their sessions of the same name apart (one object each), so one device's
key cannot act as the other device, or as its people, in the other's session. The Worker under
``workerd``, pycrdt clients."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pycrdt import Map
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from kikitest.edge_fixtures import ISSUER, EdgeServer, edge_server
from kikitest.sync_fixtures import YClient, eventually
from libkiki.sync.tokens import SigningKey

pytestmark = pytest.mark.interop

OWN = SigningKey.generate()  # device A's, whose session "device" is at stake
OTHER = SigningKey.generate()  # device B's, trusted by the same edge


@pytest.fixture(scope="module")
def edge() -> Iterator[EdgeServer]:
    keys = json.dumps([OWN.public_jwk(), OTHER.public_jwk()])
    with edge_server(OWN, KIKI_TRUSTED_KEYS=keys) as server:
        yield server


def tok(key: SigningKey, role: str, sub: str = "test", session: str = "device") -> str:
    return key.issue(session, role, sub=sub, iss=ISSUER, ttl=600)


def seen(client: YClient, root: str) -> dict[str, Any]:
    value: dict[str, Any] = client.doc.get(root, type=Map).to_py()
    return value


async def refusal(url: str, token: str) -> tuple[int | None, str]:
    """The close a client sending ``token`` as its first message gets (none: it joined)."""
    async with connect(url) as ws:
        try:
            await ws.send(json.dumps({"token": token}))
            while True:
                await ws.recv()
        except ConnectionClosed:
            pass
        return ws.close_code, ws.close_reason or ""


def intent(key: str, by: str) -> dict[str, object]:
    return {
        "id": key,
        "tool": "dev.kiki.demo.echo",
        "input": {},
        "by": by,
        "createdAt": "2026-12-07T18:00:00Z",
    }


async def test_another_keys_tokens_never_reach_the_sessions_document(edge: EdgeServer) -> None:
    url = edge.url("device", None)
    device = await YClient.join(f"{url}?token={tok(OWN, 'device')}")
    device.doc.get("device", type=Map)["screen"] = "home"
    alice = await YClient.join(f"{url}?token={tok(OWN, 'controller', 'alice')}")
    await eventually(lambda: seen(alice, "device") == {"screen": "home"})
    # Device B's key, as the device and as alice, in the URL and as the first message: each
    # joins a document of B's own, which holds nothing of A's, and A's never sees its writes.
    forged = [
        await YClient.join(f"{url}?token={tok(OTHER, 'device', 'mallory')}"),
        await YClient.join(
            f"{url}?kid={OTHER.kid}", first=json.dumps({"token": tok(OTHER, "controller", "alice")})
        ),
    ]
    for n, client in enumerate(forged):
        assert seen(client, "device") == {}
        client.doc.get("intents", type=Map)[f"k{n}"] = intent(f"k{n}", "alice")
    await eventually(lambda: all("k1" in seen(c, "intents") for c in forged))
    alice.doc.get("intents", type=Map)["mine"] = intent("mine", "alice")
    await eventually(lambda: "mine" in seen(device, "intents"))
    assert seen(device, "intents").keys() == {"mine"}
    assert seen(forged[0], "intents").keys() == {"k0", "k1"}
    for client in (device, alice, *forged):
        await client.close()
    # Each key's object answers for its own: the info of A's session counts A's revocations.
    status, _ = edge.request(
        "POST", "/session/device/revoke", {"jti": "b-only"}, tok(OTHER, "device")
    )
    assert status == 200
    assert edge.info("device")["revoked"] == 0


async def test_the_first_message_reaches_the_key_the_url_names(edge: EdgeServer) -> None:
    url = edge.url("named", None)
    token = tok(OWN, "controller", session="named")
    # Two keys trusted: a URL with neither a token nor a kid cannot say whose session it is.
    code, reason = await refusal(url, token)
    assert code == 1008
    assert "name the session's (?kid=)" in reason
    # The kid in the URL (public) routes it; the token must then be that key's.
    joined = await YClient.join(f"{url}?kid={OWN.kid}", first=json.dumps({"token": token}))
    assert joined.open
    await joined.close()
    other = tok(OTHER, "controller", session="named")
    assert await refusal(f"{url}?kid={OWN.kid}", other) == (
        1008,
        "PermissionDenied: token signed by another key than the session's",
    )
    assert await refusal(f"{url}?kid=nobody", token) == (
        1008,
        "PermissionDenied: no trusted key has that kid",
    )


async def test_an_edge_with_one_key_takes_the_first_message_without_a_kid() -> None:
    # The dashboard's way at an edge of one device: the token only as the first message.
    with edge_server(OWN) as edge:
        token = tok(OWN, "observer", session="solo")
        client = await YClient.join(edge.url("solo", None), first=json.dumps({"token": token}))
        assert client.open
        await client.close()
