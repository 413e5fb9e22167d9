"""What changes while a client waits for its session to load: the relay in-process, a real
WebSocket, a store whose load waits until the test lets it finish."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from kiki_sync_relay.limits import Limits
from kiki_sync_relay.relay import Relay
from kiki_sync_relay.store import Store
from libkiki.sync.tokens import Revocations, SigningKey, Verifier

pytestmark = pytest.mark.integration

KEY = SigningKey.generate()


class GatedStore(Store):
    """A store whose loads say they started (:attr:`loading`) and wait for :attr:`gate`."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = asyncio.Event()
        self.loading = asyncio.Event()

    async def load(self, session: str) -> list[bytes]:
        self.loading.set()
        await self.gate.wait()
        return await super().load(session)


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[tuple[Relay, GatedStore, str]]:
    store = GatedStore(tmp_path / "sessions.sqlite3")
    store.start()
    relay = Relay(store, Verifier([KEY.public]), Revocations(), Limits(), Counter())

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        name, _, token = ws.request.path.removeprefix("/session/").partition("?token=")
        await relay.serve(ws, name, token)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield relay, store, f"ws://127.0.0.1:{port}/session/"
        store.gate.set()
        await relay.close_all()
    await store.stop()


async def test_a_token_revoked_while_its_session_loads_is_refused(
    relay: tuple[Relay, GatedStore, str],
) -> None:
    server, store, base = relay
    token = KEY.issue("s1", "controller", sub="t", iss="device", jti="revoked-midway")
    async with connect(f"{base}s1?token={token}") as ws:
        async with asyncio.timeout(5):
            await store.loading.wait()
        assert server.revoke("revoked-midway") == 0  # not a member yet: nothing to close
        store.gate.set()
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(5):
                await ws.recv()
        assert ws.close_code == 1008
        assert ws.close_reason == "PermissionDenied: the token was revoked"
    assert not server.live["s1"].peers
