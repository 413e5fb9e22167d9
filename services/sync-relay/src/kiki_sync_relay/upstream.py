"""The link upstream: each shared session joined at the edge as its ``device`` peer.

The edge speaks the same protocol as this relay, so the link is one more member of the local
session whose WebSocket happens to be a client connection: it joins the local session like a
client (its step 1 and awareness go up, the upstream's step 1 is answered with what it lacks),
what local clients write is relayed up once durable, what comes down is checked on the shadow,
made durable and relayed to the local clients. The upstream holds a ``device`` token for the
session, minted here with the device's own key (the edge trusts its public JWK), fresh for each
connection.

When the upstream is unreachable or drops the link, local clients go on as before; the link
tries again after a growing wait (:class:`libkiki.backoff.RestartBackoff`: 0.5 s doubling to
``maximum``, back to 0.5 s after a link that lasted), and the two documents converge when it
is back, since each side's step 1 gets the other's missing updates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from kiki_sync_relay.relay import Relay
from kiki_sync_relay.session import Member
from libkiki.backoff import RestartBackoff
from libkiki.errors import KikiError
from libkiki.sync.tokens import SigningKey

log = logging.getLogger(__name__)
# A link token's lifetime; each connection gets a fresh one, and a link outliving it is closed
# by the upstream, then made again.
LINK_TTL = 3600.0
OPEN_TIMEOUT = 10.0


@dataclass(slots=True)
class LinkState:
    session: str
    linked: bool = False
    connects: int = 0
    failures: int = 0
    last_error: str = ""
    since: float = field(default_factory=time.time)

    def view(self) -> dict[str, object]:
        return {
            "session": self.session,
            "linked": self.linked,
            "connects": self.connects,
            "failures": self.failures,
            "lastError": self.last_error,
            "since": self.since,
        }


class Upstream:
    """Links every session of ``sessions`` to ``base`` (``ws(s)://host[:port]``) while open."""

    def __init__(
        self,
        relay: Relay,
        base: str,
        sessions: list[str],
        key: SigningKey,
        device_id: str,
        *,
        max_message: int,
        backoff_max: float = 30.0,
    ) -> None:
        self.relay = relay
        self.base = base.rstrip("/")
        self.key = key
        self.device_id = device_id
        self.max_message = max_message
        self.backoff_max = backoff_max
        self.links = {name: LinkState(name) for name in sessions}

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Upstream]:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self._keep(name)) for name in self.links]
            try:
                yield self
            finally:
                for task in tasks:
                    task.cancel()

    async def _keep(self, name: str) -> None:
        state = self.links[name]
        backoff = RestartBackoff(initial=0.5, maximum=max(0.5, self.backoff_max))
        while True:
            backoff.started()
            try:
                await self._link(name, state, backoff)
            except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake, InvalidURI) as exc:
                state.last_error = f"{type(exc).__name__}: {exc}"
            except KikiError as exc:
                state.last_error = f"{type(exc).__name__}: {exc}"
            if state.linked or not state.failures:
                # Said once per outage; the state is in `kiki session show` meanwhile.
                log.warning("no upstream link for %s: %s", name, state.last_error)
            if state.linked:
                state.linked, state.since = False, time.time()
            state.failures += 1
            self.relay.counters["upstream_link_failures"] += 1
            await asyncio.sleep(backoff.exited(time.monotonic()))

    async def _link(self, name: str, state: LinkState, backoff: RestartBackoff) -> None:
        token = self.key.issue(
            name, "device", sub=f"device:{self.device_id}", iss=self.device_id, ttl=LINK_TTL
        )
        url = f"{self.base}/session/{name}?token={token}"
        # The opening handshake has a deadline; the link itself has none.
        ws = await connect(url, max_size=self.max_message, open_timeout=OPEN_TIMEOUT)
        try:
            live = await self.relay.open(name)
            state.linked, state.since = True, time.time()
            state.connects += 1
            state.last_error = ""
            self.relay.counters["upstream_links"] += 1
            backoff.ready(time.monotonic())
            log.info("linked session %s upstream", name)
            await self.relay.attach(
                ws, name, live, Member(role="device", sub="upstream", bounded=False), limited=False
            )
            if ws.close_code is not None:
                rcvd = ws.protocol.close_rcvd
                why = f"{rcvd.code} {rcvd.reason}" if rcvd is not None else str(ws.close_code)
                state.last_error = f"closed by the upstream: {why}"
        finally:
            await ws.close()
