"""The upstream link against the edge itself: a device relay linking a shared session to the
edge Worker's Session object under ``workerd`` (which trusts the device's key), stopped and
killed mid-session, and refusing revocations while the link stays up. Needs ``node`` and the
edge's npm packages (scripts/install-node-deps)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import jwt
import pytest

from kikitest import VENV_BIN
from kikitest.edge_fixtures import EdgeServer, RevocationGate, edge_server
from kikitest.sync_fixtures import (
    TIMEOUT,
    DeviceRelay,
    YClient,
    eventually,
    partition_and_heal,
    until,
)

pytestmark = pytest.mark.interop

SHARED = "kitchen"


@pytest.fixture
def linked(tmp_path: Path) -> Iterator[tuple[DeviceRelay, EdgeServer]]:
    device = DeviceRelay(tmp_path)
    with edge_server(device.key) as edge:
        device.env.update(
            KIKI_SYNC_RELAY_UPSTREAM=f"ws://127.0.0.1:{edge.port}",
            KIKI_SYNC_RELAY_UPSTREAM_SESSIONS=SHARED,
            KIKI_SYNC_RELAY_UPSTREAM_BACKOFF_MAX="1",
        )
        try:
            device.start()
            yield device, edge
        finally:
            device.close()


@pytest.mark.parametrize("kill", [False, True], ids=["stopped", "killed"])
async def test_a_session_shared_with_the_edge_converges_after_a_partition(
    linked: tuple[DeviceRelay, EdgeServer], kill: bool
) -> None:
    device, edge = linked
    await partition_and_heal(device, edge, SHARED, kill=kill)


async def _revoke(device: DeviceRelay, jti: str) -> str:
    done = await asyncio.to_thread(
        subprocess.run,
        [str(VENV_BIN / "kiki"), "session", "revoke", SHARED, jti],
        env=device.env,
        check=True,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    return done.stdout


async def test_a_revocation_reaches_the_edge(linked: tuple[DeviceRelay, EdgeServer]) -> None:
    device, edge = linked
    token = device.token(SHARED, "controller")
    at_edge = await YClient.join(edge.url(SHARED, token))
    said = await _revoke(device, jwt.decode(token, options={"verify_signature": False})["jti"])
    assert "the edge confirmed the revocation" in said
    assert await at_edge.closed() == 1008
    assert at_edge.close_reason == "PermissionDenied: token revoked"


async def test_a_revocation_the_edge_missed_is_sent_when_the_link_is_back(
    linked: tuple[DeviceRelay, EdgeServer],
) -> None:
    device, edge = linked
    token = device.token(SHARED, "controller")
    await asyncio.to_thread(edge.stop)
    said = await _revoke(device, jwt.decode(token, options={"verify_signature": False})["jti"])
    assert "it is told again when the link is back" in said
    # Recorded: kept across a restart of the relay too.
    await device.restart(kill=False)
    await asyncio.to_thread(edge.start)

    async def refused() -> bool:
        client = await YClient.join(edge.url(SHARED, token), sync=False)
        try:
            return await client.closed(within=2) == 1008
        except TimeoutError:
            await client.close()
            return False

    async with asyncio.timeout(TIMEOUT):
        while not await refused():  # noqa: ASYNC110  (polls the edge)
            await asyncio.sleep(0.2)
    await eventually(
        lambda: (
            not (device.state / "sync-relay" / "upstream-revocations.json").read_text().strip("[] ")
        )
    )


@contextlib.asynccontextmanager
async def gated(tmp_path: Path) -> AsyncIterator[tuple[DeviceRelay, EdgeServer, RevocationGate]]:
    """A device relay linked to the edge through a :class:`RevocationGate`, once linked."""
    device = DeviceRelay(tmp_path)
    with edge_server(device.key) as edge:
        async with RevocationGate(edge.port) as gate:
            device.env.update(
                KIKI_SYNC_RELAY_UPSTREAM=f"ws://127.0.0.1:{gate.port}",
                KIKI_SYNC_RELAY_UPSTREAM_SESSIONS=SHARED,
                KIKI_SYNC_RELAY_UPSTREAM_BACKOFF_MAX="1",
            )
            await asyncio.to_thread(device.start)
            try:

                async def linked() -> bool:
                    return bool((await device.show(SHARED))["upstream"]["linked"])

                await until(linked)
                yield device, edge, gate
            finally:
                await asyncio.to_thread(device.close)


async def test_a_revocation_the_edge_refused_is_sent_again_while_the_link_is_up(
    tmp_path: Path,
) -> None:
    """The edge reachable for the link but answering the revoke request 503 (a Worker
    overloaded or being redeployed): the relay sends it again while the link stays up, without
    waiting for the link to drop and come back."""
    async with gated(tmp_path) as (device, edge, gate):
        await _revoked_while_linked(device, edge, gate)


async def _revoked_while_linked(
    device: DeviceRelay, edge: EdgeServer, gate: RevocationGate
) -> None:
    connects = (await device.show(SHARED))["upstream"]["connects"]
    token = device.token(SHARED, "controller")
    at_edge = await YClient.join(edge.url(SHARED, token))
    gate.refusing = 503
    said = await _revoke(device, jwt.decode(token, options={"verify_signature": False})["jti"])
    assert "did not confirm" in said
    # Sent again while refused: the relay keeps trying over the same link.
    await eventually(lambda: gate.refused >= 3)
    assert at_edge.open
    gate.refusing = None
    assert await at_edge.closed() == 1008
    assert at_edge.close_reason == "PermissionDenied: token revoked"
    await eventually(
        lambda: (
            not (device.state / "sync-relay" / "upstream-revocations.json").read_text().strip("[] ")
        )
    )
    shown = (await device.show(SHARED))["upstream"]
    assert shown["linked"]
    assert shown["connects"] == connects, "the link was made again: not what this tests"


async def test_a_revocation_the_edge_refused_for_good_waits_for_the_next_link(
    tmp_path: Path,
) -> None:
    """A 4xx answer (here 403) is the edge's last word for this link: the relay does not ask
    again while the link lasts (it keeps the revocation and sends it when the link is next
    made)."""
    async with gated(tmp_path) as (device, _edge, gate):
        gate.refusing = 403
        token = device.token(SHARED, "controller")
        said = await _revoke(device, jwt.decode(token, options={"verify_signature": False})["jti"])
        assert "did not confirm" in said
        # Long enough for three more tries at the 1 s the other test sees.
        await asyncio.sleep(3.5)
        assert gate.refused == 1
        assert (device.state / "sync-relay" / "upstream-revocations.json").read_text().strip("[] ")
