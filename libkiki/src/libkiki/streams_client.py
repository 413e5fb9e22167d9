"""Subscribing to the broker's event streams (lexicon ``subscription`` types), client side.

:meth:`libkiki.tools.ToolClient.subscribe` returns a :class:`Subscription`: an async iterator,
and an async context manager whose exit unsubscribes::

    async with tools.subscribe("dev.kiki.tools.subscribeProviders") as stream:
        async for item in stream:
            match item:
                case Event(seq=seq, message=message): ...
                case Lost(count=count): ...  # this many messages were dropped, unread
                case Status(state=state): ...  # the provider went away ("waiting") or is back

``stream.messages()`` iterates the messages alone (what was lost is then in ``stream.lost``,
the upstream's state in ``stream.state``). The iteration ends when the broker ends the stream:
normally (the provider ended it: ``stream.ended`` says why) or with a typed error
(:class:`~libkiki.errors.Unavailable` when the provider refused it or the broker shuts down,
:class:`~libkiki.errors.PermissionDenied` when a policy reload denies it,
:class:`~libkiki.errors.PeerGone` when the connection to the broker is lost).

The wire protocol is issue 18's (``kiki/subscribe``, ``kiki/event``, ``kiki/lost``,
``kiki/streamStatus``, ``kiki/ended``, ``kiki/unsubscribe``). Notifications are routed as they
are read (no task each, so they keep their order) into one bounded queue per subscription. A
subscriber that does not keep up loses its oldest queued messages here as it would at the
broker, and is told the same way: one :class:`Lost` with the exact count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import orjson

from libkiki.errors import (
    KikiError,
    NotFound,
    PeerGone,
    PermissionDenied,
    ProtocolError,
    SchemaError,
    Unavailable,
)

if TYPE_CHECKING:
    from libkiki.rpc import Connection, Methods

__all__ = [
    "DEFAULT_MAX_QUEUE",
    "Ended",
    "Event",
    "Item",
    "Lost",
    "Status",
    "StreamRouter",
    "Subscription",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

SUBSCRIBE = "kiki/subscribe"
UNSUBSCRIBE = "kiki/unsubscribe"
EVENT = "kiki/event"
LOST = "kiki/lost"
STATUS = "kiki/streamStatus"
ENDED = "kiki/ended"

DEFAULT_MAX_QUEUE = 1024  # items held per subscription while its reader is behind
_MAX_EARLY = 4096  # notifications held for subscriptions whose answer is not read yet
_MAX_EARLY_BYTES = 4 << 20  # and their size (as the broker sent them, roughly)


@dataclass(frozen=True, slots=True)
class Event(Generic[T]):
    """One message, with its per-subscription sequence number (1, 2, 3, ...)."""

    seq: int
    message: T


@dataclass(frozen=True, slots=True)
class Lost:
    """``count`` messages were dropped before being read: the next ``seq`` is that much higher."""

    count: int


@dataclass(frozen=True, slots=True)
class Status:
    """The upstream's state from here on: ``waiting`` (its provider went away: ``reason``) or
    ``live`` again; ``interruptions`` is how often it was cut since the last status."""

    state: Literal["waiting", "live"]
    reason: str | None
    interruptions: int


@dataclass(frozen=True, slots=True)
class Ended:
    """Why a subscription ended: the broker's reason (``providerEnded``, ``refused``,
    ``denied``, ``shutdown``), ``unsubscribed`` when this end left, ``connectionLost``."""

    reason: str
    message: str | None = None


Item = Event[T] | Lost | Status

# What the router queues: (kind, payload) as read, parsed only when the reader takes it.
_Raw = tuple[str, Any]


def _end_error(nsid: str, ended: Ended) -> KikiError | None:
    """The error an end raises in the iterating code; None for a normal end."""
    detail = f": {ended.message}" if ended.message else ""
    data = {"nsid": nsid, "reason": ended.reason, "message": ended.message}
    if ended.reason in ("providerEnded", "unsubscribed"):
        return None
    if ended.reason == "denied":
        return PermissionDenied(
            f"{nsid}: the broker's policy no longer allows it{detail}", data=data
        )
    if ended.reason == "refused":
        return Unavailable(f"{nsid}: the provider refused the stream{detail}", data=data)
    if ended.reason == "shutdown":
        return Unavailable(f"{nsid}: the broker is shutting down{detail}", data=data)
    return Unavailable(f"{nsid}: the broker ended the stream ({ended.reason}){detail}", data=data)


def _size(params: Any) -> int:
    """A notification's size for the early buffer's bound: its message's JSON, measured once
    more (rare: only notifications read before their subscription's answer are held)."""
    message = params.get("message") if isinstance(params, dict) else None
    if message is None:
        return 64
    try:
        return 64 + len(orjson.dumps(message))
    except TypeError:
        return 64


def _int(params: Any, key: str) -> int:
    value = params.get(key) if isinstance(params, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"a stream notification without a valid {key!r}")
    return value


class Subscription(Generic[T]):
    """One subscription; see the module docstring. Made by :meth:`ToolClient.subscribe`."""

    def __init__(
        self,
        router: StreamRouter,
        nsid: str,
        params: dict[str, Any],
        parse: Callable[[Any], T] | None,
        max_queue: int = DEFAULT_MAX_QUEUE,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.nsid = nsid
        self.params = params
        self.meta = dict(meta) if meta else None  # the request's _meta (a delegate's person)
        self.id: int | None = None
        self.state: str = "opening"  # as of the last item read
        self.lost = 0  # messages lost so far, as of the last item read
        self.ended: Ended | None = None
        self._router = router
        self._parse = parse
        self._max_queue = max(1, max_queue)
        self._items: deque[_Raw] = deque()
        self._dropped = 0  # messages dropped from the head of the queue, not told yet
        self._dropped_status: Status | None = None  # a status dropped with them
        self._next_seq = 1
        self._waiter: asyncio.Future[None] | None = None
        self._opening: asyncio.Task[None] | None = None
        self._failed = False  # the last item was queued (an end, an error): take no more
        self._held = False  # the broker holds it: subscribed, neither ended nor unsubscribed
        self._abandoned = False  # its opener gave up: unsubscribe as soon as it is known

    # -- opening and closing -------------------------------------------------------------------

    async def open(self) -> Subscription[T]:
        """Subscribe (done by ``async with`` or the first ``anext``; once)."""
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._subscribe())
            # Read here when nobody awaits it any more (its opener was cancelled).
            self._opening.add_done_callback(lambda t: t.cancelled() or t.exception())
        await asyncio.shield(self._opening)
        return self

    async def _subscribe(self) -> None:
        router = self._router
        conn = router.connection
        params: dict[str, Any] = {"nsid": self.nsid}
        if self.params:
            params["params"] = self.params
        if self.meta:
            params["_meta"] = self.meta
        router.pending += 1
        try:
            answer = await conn.request(SUBSCRIBE, params)
        finally:
            router.pending -= 1
        sub = answer.get("subscription") if isinstance(answer, dict) else None
        if not isinstance(sub, int) or isinstance(sub, bool):
            raise ProtocolError(f"{SUBSCRIBE} answered without a subscription id")
        self.id = sub
        state = answer.get("state")
        self.state = state if isinstance(state, str) else "opening"
        self._held = True
        router.attach(self)
        if self._abandoned:
            await self._unsubscribe()

    async def __aenter__(self) -> Subscription[T]:
        try:
            return await self.open()
        except asyncio.CancelledError:
            # No __aexit__ follows a failed enter: if the broker says yes after all, the
            # opening task unsubscribes at once (else the broker would hold it until the
            # connection ends). A cancelled anext() leaves the subscription to its holder.
            self._abandoned = True
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Unsubscribe (only this end's part once the broker has ended the stream, or the
        connection is gone); the iteration ends. While the subscription is being opened, it
        is unsubscribed once open."""
        if self._opening is not None and not self._opening.done():
            self._abandoned = True
            return
        await self._unsubscribe()

    async def _unsubscribe(self) -> None:
        self._router.detach(self)
        held, self._held = self._held, False
        self._finish(Ended("unsubscribed"))
        conn = self._router.connection_or_none
        if not held or self.id is None or conn is None or conn.closed:
            return
        # NotFound: its kiki/ended crossed our request; PeerGone: the broker forgot it.
        with contextlib.suppress(NotFound, PeerGone):
            await conn.request(UNSUBSCRIBE, {"subscription": self.id})

    def _finish(self, ended: Ended) -> None:
        if self.ended is None:
            self.ended = ended
        self._failed = True
        self._items.clear()
        self._dropped = 0
        self._dropped_status = None
        self._wake()

    # -- what the router delivers (as read, no waiting) ---------------------------------------

    def deliver(self, kind: str, params: dict[str, Any]) -> None:
        if self._failed:
            return
        try:
            if kind == EVENT:
                seq = _int(params, "seq")
                if seq != self._next_seq:
                    raise ProtocolError(
                        f"{self.nsid}: event {seq} where {self._next_seq} was due (none lost)",
                        data={"seq": seq, "expected": self._next_seq},
                    )
                self._next_seq = seq + 1
                self._push((EVENT, (seq, params.get("message"))))
            elif kind == LOST:
                count = _int(params, "count")
                self._next_seq += count
                self._push((LOST, count))
            elif kind == STATUS:
                state = params.get("state")
                if state not in ("waiting", "live"):
                    raise ProtocolError(f"{self.nsid}: a stream status of {state!r}")
                reason = params.get("reason")
                interruptions = params.get("interruptions")
                self._push(
                    (
                        STATUS,
                        Status(
                            state,
                            reason if isinstance(reason, str) else None,
                            interruptions if isinstance(interruptions, int) else 0,
                        ),
                    )
                )
            elif kind == ENDED:
                self._held = False  # the broker has forgotten it
                reason = params.get("reason")
                message = params.get("message")
                ended = Ended(
                    reason if isinstance(reason, str) else "unknown",
                    message if isinstance(message, str) else None,
                )
                self._last((ENDED, ended))
        except ProtocolError as exc:
            self._last(("error", exc))

    def fail(self, error: KikiError) -> None:
        """The connection is gone: what is queued is still read, then ``error`` is raised."""
        self._held = False
        if not self._failed:
            self._last(("error", error))

    def _last(self, raw: _Raw) -> None:
        self._items.append(raw)
        self._failed = True
        self._router.detach(self)
        self._wake()

    def _push(self, raw: _Raw) -> None:
        self._items.append(raw)
        # Over the bound the oldest go, as at the broker: a reader catching up is better
        # served by the newest messages; it is told the exact count (one Lost in their place).
        while len(self._items) > self._max_queue:
            kind, payload = self._items.popleft()
            if kind == EVENT:
                self._dropped += 1
            elif kind == LOST:
                self._dropped += payload
            elif kind == STATUS:
                earlier = self._dropped_status
                extra = earlier.interruptions if earlier is not None else 0
                self._dropped_status = Status(
                    payload.state, payload.reason, payload.interruptions + extra
                )
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- reading -------------------------------------------------------------------------------

    def __aiter__(self) -> Subscription[T]:
        return self

    async def __anext__(self) -> Item[T]:
        if self.id is None:
            # Not subscribed yet: (still) opening, or the opening failed (re-raised here, also
            # after a first anext() was cancelled while it waited).
            await self.open()
        while True:
            if self._dropped:
                count, self._dropped = self._dropped, 0
                self.lost += count
                return Lost(count)
            if self._dropped_status is not None:
                status, self._dropped_status = self._dropped_status, None
                self.state = status.state
                return status
            if self._items:
                return self._take(*self._items.popleft())
            if self._failed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _take(self, kind: str, payload: Any) -> Item[T]:
        if kind == EVENT:
            seq, message = payload
            return Event(seq, self._typed(seq, message))
        if kind == LOST:
            self.lost += payload
            return Lost(payload)
        if kind == STATUS:
            self.state = payload.state
            return payload  # type: ignore[no-any-return]
        if kind == ENDED:
            self.ended = payload
            error = _end_error(self.nsid, payload)
            if error is not None:
                raise error
            raise StopAsyncIteration
        if isinstance(payload, PeerGone) and self.ended is None:
            self.ended = Ended("connectionLost")
        raise payload

    def _typed(self, seq: int, message: Any) -> T:
        if self._parse is None:
            return message  # type: ignore[no-any-return]
        try:
            return self._parse(message)
        except ValueError as exc:  # pydantic's ValidationError is one
            raise SchemaError(
                f"{self.nsid}: message {seq} does not fit its binding: {exc}",
                data={"nsid": self.nsid, "seq": seq},
            ) from None

    async def messages(self) -> AsyncIterator[T]:
        """The messages alone; losses and status changes only update :attr:`lost` and
        :attr:`state`."""
        async for item in self:
            if isinstance(item, Event):
                yield item.message


class StreamRouter:
    """A :class:`~libkiki.tools.ToolClient`'s subscriptions, by id: routes the broker's stream
    notifications to them as they are read."""

    def __init__(self) -> None:
        self.connection_or_none: Connection | None = None
        self.pending = 0  # kiki/subscribe requests not yet answered to their caller
        self._subs: dict[int, Subscription[Any]] = {}
        self._early: dict[int, list[tuple[str, dict[str, Any]]]] = {}
        self._early_count = 0
        self._early_bytes = 0
        self._gone: KikiError | None = None

    @property
    def connection(self) -> Connection:
        if self._gone is not None:
            raise type(self._gone)(self._gone.message)
        if self.connection_or_none is None:
            raise KikiError("ToolClient is not connected; use `async with ToolClient()`")
        return self.connection_or_none

    def install(self, methods: Methods) -> None:
        for kind in (EVENT, LOST, STATUS, ENDED):
            methods.inline(kind)(self._route(kind))

    def _route(self, kind: str) -> Callable[[Any], None]:
        def route(params: Any) -> None:
            try:
                sub_id = _int(params, "subscription")
            except ProtocolError:
                log.warning("dropped a %s notification without a subscription id", kind)
                return
            sub = self._subs.get(sub_id)
            if sub is not None:
                sub.deliver(kind, params)
            elif (
                self.pending
                and self._early_count < _MAX_EARLY
                and self._early_bytes < _MAX_EARLY_BYTES
            ):
                # The answer to kiki/subscribe is read before its events, but its caller runs
                # only after them: they wait here for it (see attach).
                self._early.setdefault(sub_id, []).append((kind, params))
                self._early_count += 1
                self._early_bytes += _size(params)
            else:
                log.debug("dropped %s for subscription %d, which is not ours now", kind, sub_id)

        return route

    def attach(self, sub: Subscription[Any]) -> None:
        assert sub.id is not None
        self._subs[sub.id] = sub
        for kind, params in self._early.pop(sub.id, ()):
            self._early_count -= 1
            self._early_bytes -= _size(params)
            sub.deliver(kind, params)
        if not self.pending:  # for subscriptions whose caller was cancelled meanwhile
            self._early.clear()
            self._early_count = 0
            self._early_bytes = 0
        if self._gone is not None:
            sub.fail(type(self._gone)(self._gone.message))

    def detach(self, sub: Subscription[Any]) -> None:
        if sub.id is not None and self._subs.get(sub.id) is sub:
            del self._subs[sub.id]

    def gone(self, error: KikiError) -> None:
        """The connection ended: every subscription's iterator ends with ``error``."""
        if self._gone is None:
            self._gone = error
        for sub in list(self._subs.values()):
            sub.fail(type(error)(error.message))
        self._subs.clear()
        self._early.clear()
        self._early_count = 0
        self._early_bytes = 0

    def subscription(
        self,
        nsid: str,
        params: Mapping[str, Any],
        parse: Callable[[Any], T] | None,
        max_queue: int,
        meta: Mapping[str, Any] | None = None,
    ) -> Subscription[T]:
        return Subscription(self, nsid, dict(params), parse, max_queue, meta)
