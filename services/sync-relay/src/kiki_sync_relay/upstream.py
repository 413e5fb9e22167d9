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

A revocation of a token for a linked session (``kiki session revoke``) is sent to the edge too:
``POST /session/<name>/revoke`` with a short-lived device token minted here. One the edge did
not confirm is recorded (``upstream-revocations.json`` in the state directory, so a restart
keeps it) and sent again until the edge confirms it: at once each time the link comes back,
and while the session's link is up, after a growing wait (:class:`libkiki.backoff.RestartBackoff`:
1 s doubling to ``maximum``) as long as the edge's answer says trying again may help (no
answer, 5xx, 408, 429). A link can be up while the edge loses a request (an overloaded or
redeployed Worker answers 5xx), so the link coming back is not the only chance it gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import os
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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
# A revocation's request to the edge: its token's lifetime and the request's deadline.
REVOKE_TTL = 120.0
REVOKE_TIMEOUT = 10.0
# The first wait before sending unconfirmed revocations again while the link is up; it doubles
# up to the link's own back-off maximum.
RESEND_INITIAL = 1.0

Outcome = Literal["confirmed", "again", "refused"]


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
        pending_path: Path | None = None,
    ) -> None:
        self.relay = relay
        self.base = base.rstrip("/")
        self.key = key
        self.device_id = device_id
        self.max_message = max_message
        self.backoff_max = backoff_max
        self.links = {name: LinkState(name) for name in sessions}
        # Revocations the edge has not confirmed yet: (session, jti, exp).
        self.pending_path = pending_path
        self.pending: list[tuple[str, str, int | None]] = []
        if pending_path is not None and pending_path.exists():
            self.pending = [(str(n), str(j), e) for n, j, e in json.loads(pending_path.read_text())]
        # Per session: the task sending its unconfirmed revocations while its link is up.
        self._resending: dict[str, asyncio.Task[None]] = {}

    # -- revocations --------------------------------------------------------------------------

    async def revoke(self, name: str, jti: str, exp: int | None) -> str:
        """Tell the edge ``jti`` is revoked in session ``name``: ``"confirmed"``, ``"pending"``
        (recorded; sent again while the link is up and when it is back) or ``"not linked"``."""
        if name not in self.links:
            return "not linked"
        entry = (name, jti, exp)
        if entry not in self.pending:
            self.pending.append(entry)
            self._save()
        outcome = await self._post(entry)
        if outcome == "confirmed":
            self._confirmed(entry)
            return "confirmed"
        if outcome == "again":
            self._resend_while_linked(name)
        return "pending"

    def _pending_for(self, name: str) -> list[tuple[str, str, int | None]]:
        return [entry for entry in self.pending if entry[0] == name]

    def _resend_while_linked(self, name: str) -> None:
        """Start sending ``name``'s unconfirmed revocations again, unless its link is down
        (then the link's return starts it) or it is under way."""
        if not self.links[name].linked or not self._pending_for(name):
            return
        task = self._resending.get(name)
        if task is None or task.done():
            self._resending[name] = asyncio.create_task(self._resend(name))

    def _stop_resending(self, name: str) -> None:
        task = self._resending.pop(name, None)
        if task is not None:
            task.cancel()

    async def _resend(self, name: str) -> None:
        """Send ``name``'s unconfirmed revocations until the edge confirms them all, waiting
        longer after each round that leaves some; cancelled when the link goes. A round in
        which the edge refused each one for good (a 4xx other than 408/429: not an edge, a key
        it does not trust) ends it: they are sent again when the link is next made."""
        backoff = RestartBackoff(
            initial=RESEND_INITIAL, maximum=max(RESEND_INITIAL, self.backoff_max)
        )
        while True:
            backoff.started()
            again = False
            for entry in self._pending_for(name):
                outcome = await self._post(entry)
                if outcome == "confirmed":
                    self._confirmed(entry)
                again = again or outcome == "again"
            if not self._pending_for(name) or not again:
                return
            self.relay.counters["upstream_revocation_retries"] += 1
            await asyncio.sleep(backoff.exited(time.monotonic()))

    def _confirmed(self, entry: tuple[str, str, int | None]) -> None:
        if entry in self.pending:
            self.pending.remove(entry)
            self._save()

    def _save(self) -> None:
        if self.pending_path is None:
            return
        temporary = self.pending_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.pending))
        os.replace(temporary, self.pending_path)

    async def _post(self, entry: tuple[str, str, int | None]) -> Outcome:
        """Send one revocation: ``confirmed`` (200), ``again`` (unreachable, 5xx, 408, 429:
        worth another try soon) or ``refused`` (any other answer)."""
        name, jti, exp = entry
        token = self.key.issue(
            name, "device", sub=f"device:{self.device_id}", iss=self.device_id, ttl=REVOKE_TTL
        )
        body = json.dumps({"jti": jti} if exp is None else {"jti": jti, "exp": exp}).encode()
        try:
            status = await asyncio.to_thread(self._request, f"/session/{name}/revoke", body, token)
        except (OSError, http.client.HTTPException) as exc:
            log.info("the edge did not take the revocation of %s in %s: %s", jti, name, exc)
            return "again"
        if status == 200:
            return "confirmed"
        if status >= 500 or status in (408, 429):
            log.info("the edge could not take the revocation of %s in %s: %s", jti, name, status)
            return "again"
        log.warning("the edge refused the revocation of %s in %s: %s", jti, name, status)
        return "refused"

    def _request(self, path: str, body: bytes, token: str) -> int:
        url = urllib.parse.urlsplit(self.base)
        kind = http.client.HTTPSConnection if url.scheme == "wss" else http.client.HTTPConnection
        conn = kind(url.netloc, timeout=REVOKE_TIMEOUT)
        try:
            conn.request(
                "POST",
                path,
                body=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            answer = conn.getresponse()
            answer.read()
            return answer.status
        finally:
            conn.close()

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
            self._resend_while_linked(name)
            await self.relay.attach(
                ws, name, live, Member(role="device", sub="upstream", bounded=False), limited=False
            )
            if ws.close_code is not None:
                rcvd = ws.protocol.close_rcvd
                why = f"{rcvd.code} {rcvd.reason}" if rcvd is not None else str(ws.close_code)
                state.last_error = f"closed by the upstream: {why}"
        finally:
            try:
                await ws.close()
            finally:
                # After the last await of this link: nothing starts resending between here and
                # the link being marked down.
                self._stop_resending(name)
