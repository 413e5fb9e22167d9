"""``dev.kiki.session.revoke`` on a real relay's admin socket, with the token's ``exp``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from kikitest.sync_fixtures import DeviceRelay, YClient
from libkiki.rpc import connect_unix
from libkiki.sync import ADMIN_SOCKET

pytestmark = pytest.mark.integration


@pytest.fixture
def device(tmp_path: Path) -> Iterator[DeviceRelay]:
    relay = DeviceRelay(tmp_path)
    relay.start()
    yield relay
    relay.close()


async def test_a_token_expired_within_the_leeway_is_still_revoked(device: DeviceRelay) -> None:
    # Expired 10 s ago: still accepted (clocks may differ by 30 s), so still revocable.
    token = device.token("s1", "controller", ttl=-10)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] < time.time()
    client = await YClient.join(device.url("s1", token))
    async with connect_unix(device.workdir / ADMIN_SOCKET) as conn:
        done = await conn.request(
            "dev.kiki.session.revoke", {"jti": claims["jti"], "exp": claims["exp"]}
        )
    assert done == {"closed": 1, "upstream": "not linked"}
    assert await client.closed() == 1008
    assert client.close_reason == "PermissionDenied: the token was revoked"
