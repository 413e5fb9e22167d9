"""Whose tokens a session takes: the device's own sessions (the device link carries them out
through the broker) only its own key's, any trusted key the others. The relay in-process, real
WebSockets."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from kiki_sync_relay.limits import Limits
from kiki_sync_relay.relay import Relay
from kiki_sync_relay.store import Store
from libkiki.sync.tokens import Revocations, SigningKey, Verifier

pytestmark = pytest.mark.integration

OWN = SigningKey.generate()
OTHER = SigningKey.generate()  # another device's, trusted besides (trusted_keys)
REFUSED = (
    "PermissionDenied: session home is this device's own: it takes tokens of the device's key only"
)


@pytest.fixture
async def base(tmp_path: Path) -> AsyncIterator[str]:
    store = Store(tmp_path / "sessions.sqlite3")
    store.start()
    relay = Relay(
        store,
        Verifier([OWN.public, OTHER.public_jwk()]),
        Revocations(),
        Limits(),
        Counter(),
        own_kid=OWN.kid,
        linked=["home"],
    )

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        name, _, token = ws.request.path.removeprefix("/session/").partition("?token=")
        await relay.serve(ws, name, token or None)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/session/"
        await relay.close_all()
    await store.stop()


async def joined(ws: ClientConnection) -> bool:
    """Whether the relay let it in (its step 1 comes) or closed it."""
    try:
        return isinstance(await ws.recv(), bytes)
    except ConnectionClosed:
        return False


@pytest.mark.parametrize(("role", "sub"), [("device", "mallory"), ("controller", "alice")])
async def test_a_trusted_keys_token_cannot_join_the_devices_own_session(
    base: str, role: str, sub: str
) -> None:
    token = OTHER.issue("home", role, sub=sub, iss="another-device")
    async with connect(f"{base}home?token={token}") as ws:
        assert not await joined(ws)
        assert (ws.close_code, ws.close_reason) == (1008, REFUSED)
    # As the first message (the browsers' way) too.
    async with connect(f"{base}home") as ws:
        await ws.send(orjson.dumps({"token": token}).decode())
        assert not await joined(ws)
        assert (ws.close_code, ws.close_reason) == (1008, REFUSED)


async def test_the_devices_own_key_joins_its_session(base: str) -> None:
    for role in ("observer", "controller", "device"):
        token = OWN.issue("home", role, sub="alice", iss="this-device")
        async with connect(f"{base}home?token={token}") as ws:
            assert await joined(ws)


async def test_a_session_not_linked_takes_any_trusted_key(base: str) -> None:
    # A relay standing in for the edge: another device links its session here.
    for key in (OWN, OTHER):
        token = key.issue("shared", "device", sub="upstream", iss="a-device")
        async with connect(f"{base}shared?token={token}") as ws:
            assert await joined(ws)
