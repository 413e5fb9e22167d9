"""The live sessions and their clients: asyncio glue around :mod:`.session` and :mod:`.store`.

One :class:`Live` per session in memory: its :class:`~.session.Session` and the WebSockets of
its members. Everything a session does runs on the loop, one message at a time, so the session
is an actor without a queue of its own. Writes to clients are :func:`websockets.broadcast`
(no task per message); a client whose unsent bytes pass ``send_buffer`` does not read and is
dropped (it resyncs when it reconnects). A session without clients for ``idle_timeout`` is
compacted and leaves memory (hibernates); the next client loads it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import broadcast
from websockets.exceptions import ConnectionClosed

from kiki_sync_relay.limits import Limits, TokenBucket
from kiki_sync_relay.session import Member, Session
from kiki_sync_relay.store import Store
from libkiki.errors import (
    KikiError,
    LimitExceeded,
    PermissionDenied,
    ProtocolError,
    Unavailable,
)
from libkiki.sync.tokens import LEEWAY, Claims, Revocations, Verifier

log = logging.getLogger(__name__)


def close_reason(exc: KikiError) -> str:
    """``<ErrorClass>: <message>`` cut to the 123 bytes a close frame's reason holds."""
    reason = f"{type(exc).__name__}: {exc}".encode()
    if len(reason) > 123:
        reason = reason[:120].decode(errors="ignore").encode() + b"..."
    return reason.decode(errors="ignore")


@dataclass(eq=False)
class Live:
    session: Session
    peers: dict[int, Connection] = field(default_factory=dict)
    idle: asyncio.TimerHandle | None = None
    compacting: bool = False
    # Members in this process (the device link) that keep the session in memory, as a peer does.
    held: int = 0

    @property
    def occupied(self) -> bool:
        return bool(self.peers) or self.held > 0


class Relay:
    def __init__(
        self,
        store: Store,
        verifier: Verifier,
        revocations: Revocations,
        limits: Limits,
        counters: Counter[str],
        *,
        idle_timeout: float = 30.0,
        compact_every: int = 1000,
        auth_timeout: float = 5.0,
        send_buffer: int = 4 << 20,
        own_kid: str = "",
        linked: Collection[str] = (),
    ) -> None:
        self.store = store
        self.verifier = verifier
        self.revocations = revocations
        self.limits = limits
        self.counters = counters
        self.idle_timeout = idle_timeout
        self.compact_every = compact_every
        self.auth_timeout = auth_timeout
        self.send_buffer = send_buffer
        # The sessions the device link carries out through the broker (its own, named in
        # link_sessions) take tokens of the device's own key only: a trusted key's token there
        # could write intents the device runs for anyone that key names.
        self.own_kid = own_kid
        self.linked = frozenset(linked)
        self.live: dict[str, Live] = {}
        self._loading: dict[str, asyncio.Future[Live]] = {}
        self._members: dict[Connection, tuple[str, Member]] = {}
        self.watchers: dict[str, set[Callable[[bytes], None]]] = {}

    # -- sessions ---------------------------------------------------------------------------

    async def open(self, name: str) -> Live:
        if (live := self.live.get(name)) is not None:
            return live
        if (pending := self._loading.get(name)) is not None:
            return await asyncio.shield(pending)
        if len(self.live) + len(self._loading) >= self.limits.max_sessions:
            raise LimitExceeded(f"{len(self.live)} sessions are live, the most the relay holds")
        future: asyncio.Future[Live] = asyncio.get_running_loop().create_future()
        self._loading[name] = future
        try:
            updates = await self.store.load(name)
            live = Live(Session(name, updates, self.limits))
            self.live[name] = live
            self.counters["sessions_loaded"] += 1
            future.set_result(live)
            return live
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a joiner that waited on it gets it raised
            raise
        finally:
            del self._loading[name]

    def touch(self, name: str, live: Live) -> None:
        if live.idle is not None:
            live.idle.cancel()
            live.idle = None
        if not live.occupied:
            loop = asyncio.get_running_loop()
            live.idle = loop.call_later(self.idle_timeout, self.hibernate, name)

    def hibernate(self, name: str) -> None:
        """Compact session ``name`` and drop it from memory, if nobody is in it."""
        live = self.live.get(name)
        if live is None or live.occupied:
            return
        if live.idle is not None:
            live.idle.cancel()
        del self.live[name]
        self.counters["sessions_hibernated"] += 1
        if live.session.updates_since_snapshot:
            # Asked now, so a load asked after it reads the compacted state.
            _background(self.store.compact(name, live.session.snapshot()))

    def _maybe_compact(self, name: str, live: Live) -> None:
        session = live.session
        # Also by size: the device's state replaces large values (the screen) often, and the
        # document's bound counts the updates since the snapshot, not what they left.
        big = session.size > self.limits.max_document // 2 and session.updates_since_snapshot > 1
        if live.compacting or (session.updates_since_snapshot < self.compact_every and not big):
            return
        live.compacting = True
        done = self.store.compact(name, live.session.snapshot())
        self.counters["compactions"] += 1

        def finished(future: asyncio.Future[None]) -> None:
            live.compacting = False
            if not future.cancelled() and (exc := future.exception()) is not None:
                log.warning("compacting session %s failed: %s", name, exc)

        done.add_done_callback(finished)

    async def close_all(self) -> None:
        for name in list(self.live):
            live = self.live[name]
            live.peers.clear()
            live.held = 0
            self.hibernate(name)
        await self.store.barrier()

    # -- revocation ---------------------------------------------------------------------------

    def revoke(self, jti: str, exp: int | None = None) -> int:
        """Revoke ``jti``; closes the connections holding it and says how many."""
        self.revocations.revoke(jti, exp)
        closed = 0
        for ws, (_, member) in list(self._members.items()):
            if member.jti == jti:
                self._close(ws, PermissionDenied("the token was revoked"))
                closed += 1
        return closed

    def _expire(self, ws: Connection) -> None:
        self.counters["clients_expired"] += 1
        self._close(ws, PermissionDenied("token expired"))

    def _close(self, ws: Connection, exc: KikiError) -> None:
        self.counters[f"closed_{exc.ws_close_code}"] += 1
        _background(asyncio.ensure_future(ws.close(exc.ws_close_code, close_reason(exc))))

    # -- one client ---------------------------------------------------------------------------

    async def authenticate(self, ws: Connection, name: str, token: str | None) -> Claims:
        if token is None:
            # Browsers keep tokens out of URLs: the first message may carry it instead.
            # Binary frames before it (a stock provider's step 1) are dropped, as on the edge:
            # nothing is relayed to or from a client before its token.
            try:
                async with asyncio.timeout(self.auth_timeout):
                    first = await ws.recv()
                    while isinstance(first, bytes):
                        first = await ws.recv()
            except TimeoutError:
                raise PermissionDenied(f"no token within {self.auth_timeout:g} s") from None
            try:
                token = str(orjson.loads(first)["token"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                raise PermissionDenied('the first message must be {"token": "<jwt>"}') from None
        claims = self.verifier.verify(token, name)
        if name in self.linked and claims.kid != self.own_kid:
            raise PermissionDenied(
                f"session {name} is this device's own: it takes tokens of the device's key only"
            )
        if claims.jti in self.revocations:
            raise PermissionDenied("the token was revoked")
        return claims

    async def serve(self, ws: Connection, name: str, token: str | None) -> None:
        try:
            claims = await self.authenticate(ws, name, token)
            live = await self.open(name)
        except KikiError as exc:
            self.counters["clients_refused"] += 1
            with contextlib.suppress(ConnectionClosed):
                await ws.close(exc.ws_close_code, close_reason(exc))
            return
        except ConnectionClosed:
            return
        member = Member(role=claims.role, jti=claims.jti, sub=claims.sub)
        # A connection lives no longer than its token (as verified: with the clocks' leeway).
        expires = claims.exp + LEEWAY
        await self.attach(ws, name, live, member, expires=expires)

    async def attach(
        self,
        ws: Connection,
        name: str,
        live: Live,
        member: Member,
        *,
        expires: float | None = None,
        limited: bool = True,
    ) -> None:
        """Serve ``member`` on ``ws`` in session ``name`` until either end closes: a client,
        or (not ``limited`` by the per-client rate, never expiring) the link upstream."""
        try:
            # The token was checked before the session loaded; a revocation or the expiry may
            # have come in the meantime. Checked again here, with no await before the join.
            if member.jti and member.jti in self.revocations:
                raise PermissionDenied("the token was revoked")
            if expires is not None and expires <= time.time():
                raise PermissionDenied("token expired")
            hello = live.session.join(member)
        except KikiError as exc:
            self.counters["clients_refused"] += 1
            with contextlib.suppress(ConnectionClosed):
                await ws.close(exc.ws_close_code, close_reason(exc))
            return
        self.counters["clients_joined"] += 1
        live.peers[member.id] = ws
        self._members[ws] = (name, member)
        self.touch(name, live)
        expiry = None
        if expires is not None:
            expiry = asyncio.get_running_loop().call_later(
                max(0.0, expires - time.time()), self._expire, ws
            )
        for message in hello:
            self._send(live, ws, message)
        try:
            await self._read(ws, name, live, member, limited=limited)
        except KikiError as exc:
            self.counters["clients_refused_later"] += 1
            log.info("closed a client of %s: %s", name, exc)
            with contextlib.suppress(ConnectionClosed):
                await ws.close(exc.ws_close_code, close_reason(exc))
        except ConnectionClosed:
            pass
        finally:
            if expiry is not None:
                expiry.cancel()
            self._members.pop(ws, None)
            live.peers.pop(member.id, None)
            if (gone := live.session.leave(member)) is not None:
                self._relay(live, member.id, gone)
            if self.live.get(name) is live:
                self.touch(name, live)

    async def _read(
        self, ws: Connection, name: str, live: Live, member: Member, *, limited: bool
    ) -> None:
        bucket = TokenBucket(self.limits.rate, self.limits.burst, time.monotonic())
        session = live.session
        async for message in ws:
            if isinstance(message, str):
                raise ProtocolError("text frames carry nothing here; y-websocket is binary")
            if limited and not bucket.take(time.monotonic()):
                raise LimitExceeded(f"more than {self.limits.rate:g} messages/s")
            self.counters["messages"] += 1
            outcome = session.receive(member, message)
            if outcome.reply:
                # An answer to step 1 may carry updates not yet durable: sent once they are.
                await self.store.barrier()
                for reply in outcome.reply:
                    self._send(live, ws, reply)
            if outcome.durable is not None:
                self._commit(name, live, member.id, outcome.durable, outcome.relay)
            elif outcome.relay is not None:
                self._relay(live, member.id, outcome.relay)

    def _commit(
        self, name: str, live: Live, sender: int, update: bytes, message: bytes | None
    ) -> asyncio.Future[None]:
        durable = self.store.append(name, update)
        durable.add_done_callback(
            functools.partial(self._durable, name, live, sender, message, update)
        )
        self._maybe_compact(name, live)
        return durable

    # -- members in this process ----------------------------------------------------------------

    def hold(self, name: str, live: Live) -> None:
        """Keep session ``name`` in memory until :meth:`release` (an in-process member)."""
        live.held += 1
        self.touch(name, live)

    def release(self, name: str, live: Live) -> None:
        live.held = max(0, live.held - 1)
        if self.live.get(name) is live:
            self.touch(name, live)

    def submit(self, name: str, live: Live, member: Member, update: bytes) -> asyncio.Future[None]:
        """Write ``update`` from an in-process ``member`` as a client's: checked on the shadow
        (a :class:`KikiError` when refused), then durable, then relayed to every client and
        watcher. The future is done once it is durable."""
        outcome = live.session.apply(update, member)
        assert outcome.durable is not None
        self.counters["messages"] += 1
        return self._commit(name, live, member.id, outcome.durable, outcome.relay)

    def _durable(
        self,
        name: str,
        live: Live,
        sender: int,
        message: bytes | None,
        update: bytes,
        future: asyncio.Future[None],
    ) -> None:
        if future.cancelled() or future.exception() is not None:
            # Not durable: not relayed. The clients resync from the document on reconnect.
            log.error("an update of %s was not stored: %s", name, future.exception())
            for ws in list(live.peers.values()):
                self._close(ws, Unavailable("the session store failed"))
            return
        self.counters["updates_relayed"] += 1
        if message is not None:
            self._relay(live, sender, message)
        for watch in self.watchers.get(name, ()):
            watch(update)

    def _relay(self, live: Live, sender: int, message: bytes) -> None:
        others = [ws for mid, ws in live.peers.items() if mid != sender]
        self._check_buffers(others)
        broadcast(others, message)

    def _send(self, live: Live, ws: Connection, message: bytes) -> None:
        self._check_buffers([ws])
        broadcast([ws], message)

    def _check_buffers(self, peers: list[Connection]) -> None:
        for ws in peers:
            transport: Any = ws.transport
            if transport is not None and transport.get_write_buffer_size() > self.send_buffer:
                self.counters["clients_dropped_slow"] += 1
                # It reads nothing, so it would not read a close frame either.
                transport.abort()


def _background(future: asyncio.Future[Any]) -> None:
    def done(f: asyncio.Future[Any]) -> None:
        if not f.cancelled() and (exc := f.exception()) is not None:
            log.warning("background work failed: %s", exc)

    future.add_done_callback(done)
