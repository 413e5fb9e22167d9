"""asyncio layer of the event streams: carries out what :class:`~kiki_tool_broker.streams.
StreamFanout` decides, on the broker's connections.

* Clients: ``kiki/subscribe`` and ``kiki/unsubscribe`` (decided by
  :meth:`~kiki_tool_broker.core.BrokerCore.subscribe`), and a writer per connection that drains
  its subscriptions' queues into ``kiki/event``, ``kiki/lost``, ``kiki/streamStatus`` and
  ``kiki/ended`` notifications. The writer takes a few items from each ready subscription in
  turn (round robin) and sends them as separate lines in one ``write()``
  (:meth:`libkiki.rpc.Connection.notify_many`; not a JSON-RPC batch, which a peer counts
  against its in-flight limit all at once), waiting only while the transport is paused: a
  subscriber that does not read holds its own writer and its own bounded queue, nothing else.
* Providers: ``kiki/openStream`` requests and ``kiki/closeStream`` / ``kiki/rejected``
  notifications to them (what cannot be written at once waits in a bounded per-provider
  backlog: an open not yet written is dropped, not cancelled, when its topic closes, and a
  provider whose backlog passes :data:`MAX_PROVIDER_BACKLOG` items or
  :data:`MAX_PROVIDER_BUFFER` unsent bytes is disconnected); ``kiki/emit`` and
  ``kiki/endStream`` from them. The ``stream`` number a provider is given is a random
  53-bit capability, not the fan-out's upstream id: emits are handled as they are read (no
  task each, see :meth:`libkiki.rpc.Methods.inline`), where the sending connection is not
  known, so only the provider the number was given to can use it.
* The broker's own streams, provided in-process: ``dev.kiki.tools.subscribeProviders`` and
  ``dev.kiki.tools.subscribeAudit``.
* MCP hosts: the same subscriptions as resources (:mod:`kiki_tool_broker.mcp_resources`),
  told ``notifications/resources/updated`` instead of being written to.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import secrets
from collections.abc import Callable, Iterable
from typing import Any, Final

import orjson

from kiki_tool_broker.core import BrokerCore, Who
from kiki_tool_broker.mcp_resources import ResourceStreams
from kiki_tool_broker.registry import Provider
from kiki_tool_broker.results import outcome_of
from kiki_tool_broker.streams import (
    Action,
    Audit,
    CloseUpstream,
    Ended,
    Item,
    Lost,
    Message,
    OpenUpstream,
    Readable,
    Rejected,
    Status,
    Subscribed,
)
from kiki_tool_broker.subscribing import Subscriber
from libkiki.errors import InvalidParams, KikiError, PeerGone
from libkiki.rpc import Connection, Methods, RequestContext

log = logging.getLogger(__name__)

SUBSCRIBE: Final = "kiki/subscribe"
UNSUBSCRIBE: Final = "kiki/unsubscribe"
LIST_STREAMS: Final = "kiki/listStreams"
EVENT: Final = "kiki/event"
LOST: Final = "kiki/lost"
STATUS: Final = "kiki/streamStatus"
ENDED: Final = "kiki/ended"
OPEN_STREAM: Final = "kiki/openStream"
CLOSE_STREAM: Final = "kiki/closeStream"
EMIT: Final = "kiki/emit"
END_STREAM: Final = "kiki/endStream"
REJECTED: Final = "kiki/rejected"

SUBSCRIBE_PROVIDERS: Final = "dev.kiki.tools.subscribeProviders"
SUBSCRIBE_AUDIT: Final = "dev.kiki.tools.subscribeAudit"
OWN_STREAMS: Final = (SUBSCRIBE_PROVIDERS, SUBSCRIBE_AUDIT)

WRITE_ITEMS: Final = 32  # notifications per write (separate lines)
PER_SUB_ITEMS: Final = 8  # taken from one subscription per turn: the others are not starved
# A provider that stops reading: what waits to be written to it, in items of our own backlog
# (openStream / closeStream not written yet) and bytes in its transport. Past either it is
# disconnected (its subscribers wait for a provider, as when it leaves).
MAX_PROVIDER_BACKLOG: Final = 1024
MAX_PROVIDER_BUFFER: Final = 1 << 20

AuditWriter = Callable[..., None]


class _Writer:
    """One client connection's writer: its subscriptions with something queued, in turn."""

    __slots__ = ("conn", "ready", "task", "wake")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.ready: dict[int, None] = {}  # ordered set of subscriptions to drain
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class _Backlog:
    """What waits to be written to one provider: openStreams (by upstream) and closeStreams
    (by token), each at most once, written by one task when the transport takes them."""

    __slots__ = ("closes", "conn", "opens", "task")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.opens: dict[int, dict[str, Any]] = {}  # upstream -> openStream params
        self.closes: dict[int, None] = {}  # tokens
        self.task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self.opens) + len(self.closes)


class EventStreams:
    def __init__(self, core: BrokerCore, audit: AuditWriter, counters: Any) -> None:
        self.core = core
        self.fanout = core.streams
        self.subscriptions = core.subscriptions
        self.audit = audit  # writes one audit line (kwargs of AuditLog.append), then publishes
        self.counters = counters
        self._cids = itertools.count(1)
        self.writers: dict[int, _Writer] = {}  # client connection id -> its writer
        # subscription -> who holds it (re-checked on policy reloads and reopenings)
        self.subs: dict[int, Subscriber] = {}
        self.sub_nsid: dict[int, str] = {}
        # A provider's stream number (capability) -> (upstream, provider id), and back.
        self.tokens: dict[int, tuple[int, int]] = {}
        self.token_of: dict[int, int] = {}
        self.opening: dict[int, asyncio.Future[Any]] = {}  # upstream -> its openStream answer
        self.own: dict[str, set[int]] = {n: set() for n in OWN_STREAMS}  # own upstreams
        self.announced: set[int] = set()  # providers told as #connected
        self.backlogs: dict[int, _Backlog] = {}  # provider id -> what waits to be written
        self._tasks: set[asyncio.Task[Any]] = set()
        self.resources = ResourceStreams(self)

    def add_methods(self, m: Methods) -> None:
        m.register_sync(SUBSCRIBE, self.subscribe)
        m.register_sync(UNSUBSCRIBE, self.unsubscribe)
        m.register_sync(LIST_STREAMS, self.list_streams)
        m.inline(EMIT)(self.emit)
        m.inline(END_STREAM)(self.end_stream)
        self.resources.add_methods(m)

    # -- clients -----------------------------------------------------------------------------

    def _cid(self, conn: Connection) -> int:
        cid: int | None = conn.state.get("stream_cid")
        if cid is None:
            cid = conn.state["stream_cid"] = next(self._cids)
        return cid

    # Kiki's own methods are strict: a key they do not know is -32602.
    def subscribe(self, request: RequestContext, nsid: Any, params: Any = None) -> dict[str, Any]:
        subscribed, actions = self.open(request, nsid, params)
        cid = self._cid(request.connection)
        if cid not in self.writers:
            writer = self.writers[cid] = _Writer(request.connection)
            writer.task = asyncio.get_running_loop().create_task(self._write_loop(cid, writer))
        self.carry(actions)
        return {"subscription": subscribed.sub, "state": subscribed.state}

    def open(
        self, request: RequestContext, nsid: Any, params: Any
    ) -> tuple[Subscribed, list[Action]]:
        """A subscription of the request's connection, decided by the core (a refusal is
        audited and raised); its actions are the caller's to carry, once it can route them."""
        who = self.who(request)
        cid = self._cid(request.connection)
        behalf = None  # the person a trusted delegate names, once it is known to be one
        try:
            subscriber = self.subscriptions.subscriber(who, request.meta)
            behalf = subscriber.on_behalf_of
            subscribed, actions = self.subscriptions.subscribe(subscriber, cid, nsid, params)
        except Exception as exc:
            outcome, code = outcome_of(exc)
            self.audit(
                caller=who.view,
                tool=str(nsid),
                outcome=outcome,
                code=code,
                duration_us=0,
                arguments=params if isinstance(params, dict) else {},
                event="subscribe",
                on_behalf_of=behalf,
            )
            raise
        self.subs[subscribed.sub] = subscriber
        assert isinstance(nsid, str)
        self.sub_nsid[subscribed.sub] = nsid
        return subscribed, actions

    def list_streams(self, request: RequestContext, cursor: Any = None) -> dict[str, Any]:
        return self.subscriptions.list_streams(self.who(request), cursor)

    def unsubscribe(self, request: RequestContext, subscription: Any) -> dict[str, Any]:
        if not isinstance(subscription, int) or isinstance(subscription, bool):
            raise InvalidParams("subscription must be an integer")
        self.carry(self.fanout.unsubscribe(self._cid(request.connection), subscription))
        return {}

    def end_subscription(self, conn: Connection, sub: int) -> None:
        """``conn`` ends ``sub`` (audited); nothing to do when it is gone already."""
        if sub in self.fanout.subscriptions(self._cid(conn)):
            self.carry(self.fanout.unsubscribe(self._cid(conn), sub))

    def who(self, request: RequestContext) -> Who:
        state = request.connection.state
        who: Who | None = state.get("caller")
        if who is None:
            who = state["caller"] = self.core.identify(request.peer)
        return who

    def connection_lost(self, conn: Connection) -> None:
        cid: int | None = conn.state.get("stream_cid")
        if cid is None:
            return
        self.resources.connection_lost(conn)
        writer = self.writers.pop(cid, None)
        if writer is not None and writer.task is not None:
            writer.task.cancel()
        self.carry(self.fanout.connection_closed(cid))

    def policy_reloaded(self) -> None:
        """End (``denied``) the subscriptions the policy no longer allows."""
        for sub, subscriber in list(self.subs.items()):
            if not self.subscriptions.may_subscribe(subscriber.caller, self.sub_nsid[sub])[0]:
                self.carry(self.fanout.end(sub, "denied", "the policy no longer allows it"))

    def shutdown(self) -> None:
        for sub in self.fanout.subscriptions():
            self.carry(self.fanout.end(sub, "shutdown"))

    async def _write_loop(self, cid: int, writer: _Writer) -> None:
        conn = writer.conn
        fanout = self.fanout
        try:
            while True:
                await writer.wake.wait()
                writer.wake.clear()
                ready = writer.ready
                while ready:
                    notes: list[tuple[str, dict[str, Any]]] = []
                    while ready and len(notes) < WRITE_ITEMS:
                        # Round robin: the first in line takes its turn and, if it has more,
                        # goes to the back, so that every ready subscription is served.
                        sub = next(iter(ready))
                        del ready[sub]
                        notes.extend(_note(item) for item in fanout.drain(sub, PER_SUB_ITEMS))
                        if fanout.pending(sub):
                            ready[sub] = None
                    if notes:
                        await conn.notify_many(notes)
                        self.counters["stream_notifications"] += len(notes)
        except (PeerGone, asyncio.CancelledError):
            return
        except KikiError as exc:
            log.info("%s: stopped writing its streams: %s", conn.name, exc)

    # -- providers ---------------------------------------------------------------------------

    def emit(self, params: Any) -> None:
        found = self._upstream(params)
        if found is not None:
            upstream, provider = found
            self.carry(self.fanout.publish(provider, upstream, params.get("message")))

    def end_stream(self, params: Any) -> None:
        found = self._upstream(params)
        if found is not None:
            upstream, _ = found
            message = params.get("message")
            self._forget_upstream(upstream)
            self.carry(
                self.fanout.upstream_ended(upstream, None if message is None else str(message))
            )

    def _upstream(self, params: Any) -> tuple[int, int] | None:
        token = params.get("stream") if isinstance(params, dict) else None
        found = self.tokens.get(token) if isinstance(token, int) else None
        if found is None:
            self.counters["stream_stale"] += 1
        return found

    def _forget_upstream(self, upstream: int) -> None:
        token = self.token_of.pop(upstream, None)
        if token is not None:
            self.tokens.pop(token, None)
        opening = self.opening.pop(upstream, None)
        if opening is not None:
            opening.cancel()

    def registered(self, provider: Provider, actions: list[Action]) -> None:
        """A registration (or an unregistration) took effect. A topic reopened on this
        provider keeps only the subscribers the policy lets subscribe to it from this
        provider (whose uids may differ from the last one's): the others end, ``denied``."""
        reopened = {a.nsid for a in actions if isinstance(a, OpenUpstream)}
        ended: list[Action] = []
        for sub, subscriber in list(self.subs.items()):
            nsid = self.sub_nsid[sub]
            if nsid not in reopened:
                continue
            if not self.subscriptions.may_subscribe(subscriber.caller, nsid)[0]:
                ended.extend(self.fanout.end(sub, "denied", "the policy does not allow it"))
        if ended:
            # An upstream whose subscribers all ended is closed already: it is not opened at
            # all (its CloseUpstream then finds no token and sends nothing).
            open_now = self.fanout.upstreams()
            actions = [
                a for a in actions if not isinstance(a, OpenUpstream) or a.upstream in open_now
            ]
        self.carry(actions + ended)
        if provider.id not in self.announced:
            self.announced.add(provider.id)
            self.publish_own(
                SUBSCRIBE_PROVIDERS,
                {
                    "$type": SUBSCRIBE_PROVIDERS + "#connected",
                    "provider": self.core.registry.describe(provider),
                },
            )

    def provider_gone(self, provider: Provider) -> None:
        backlog = self.backlogs.pop(provider.id, None)
        if backlog is not None and backlog.task is not None:
            backlog.task.cancel()
        for token, (upstream, pid) in list(self.tokens.items()):
            if pid == provider.id:
                self._forget_upstream(upstream)
                self.tokens.pop(token, None)
        self.carry(self.fanout.provider_gone(provider.id))
        if provider.id in self.announced:
            self.announced.discard(provider.id)
            self.publish_own(
                SUBSCRIBE_PROVIDERS,
                {"$type": SUBSCRIBE_PROVIDERS + "#disconnected", "id": str(provider.id)}
                | {"reason": "closed"},
            )

    def publish_own(self, nsid: str, message: Any) -> None:
        """A message on one of the broker's own streams, for its subscribers if it has any."""
        upstreams = self.own.get(nsid)
        if upstreams:
            own = self.core.own.id
            for upstream in list(upstreams):
                self.carry(self.fanout.publish(own, upstream, message))

    # -- carrying out the fan-out's actions --------------------------------------------------

    def carry(self, actions: Iterable[Action]) -> None:
        """Carry out the fan-out's actions: every other action first, then the audit lines,
        each guarded, so that one that cannot be written (a full disk) leaves nothing half
        done (it is logged and counted, ``audit_errors``)."""
        audits: list[Audit] = []
        for action in actions:
            if isinstance(action, Audit):
                if action.event == "unsubscribe":
                    self.subs.pop(action.sub, None)
                    self.sub_nsid.pop(action.sub, None)
                audits.append(action)
            elif isinstance(action, Readable):
                if self.resources.readable(action.sub):
                    continue
                writer = self.writers.get(action.conn)
                if writer is not None:
                    writer.ready[action.sub] = None
                    writer.wake.set()
            elif isinstance(action, OpenUpstream):
                self._open(action)
            elif isinstance(action, CloseUpstream):
                self._close(action)
            else:
                self._rejected(action)
        for audit in audits:
            try:
                self._audit(audit)
            except Exception:
                self.counters["audit_errors"] += 1
                log.exception("the audit line of a %s could not be written", audit.event)

    def _audit(self, action: Audit) -> None:
        served = self.fanout.served_by(action.nsid)
        provider = None if served is None else self.core.stream_providers.get(served)
        subscriber: Subscriber = action.caller
        self.audit(
            caller=subscriber.view,
            tool=action.nsid,
            outcome="ok",
            code=None,
            duration_us=0,
            arguments=action.params,
            provider=None if provider is None else provider.view,
            event=action.event,
            reason=action.reason,
            on_behalf_of=subscriber.on_behalf_of,
        )

    def _open(self, action: OpenUpstream) -> None:
        if action.provider == self.core.own.id:
            self.own.setdefault(action.nsid, set()).add(action.upstream)
            self.carry(self.fanout.upstream_opened(action.upstream))
            return
        provider = self.core.stream_providers.get(action.provider)
        if provider is None or provider.connection is None or provider.connection.closed:
            return  # its connection has closed: provider_gone makes the topic wait
        token = secrets.randbits(53) or 1
        while token in self.tokens:
            token = secrets.randbits(53) or 1
        self.tokens[token] = (action.upstream, action.provider)
        self.token_of[action.upstream] = token
        params = {"stream": token, "nsid": action.nsid, "params": action.params}
        backlog = self.backlogs.get(action.provider)
        if backlog is not None and backlog.opens:  # in order, behind those waiting already
            backlog.opens[action.upstream] = params
            self._check_backlog(provider, backlog)
        elif not self._send_open(provider.connection, action.upstream, params, queue=True):
            backlog = self._backlog(provider)
            backlog.opens[action.upstream] = params
            self._check_backlog(provider, backlog)

    def _send_open(
        self, conn: Connection, upstream: int, params: dict[str, Any], *, queue: bool
    ) -> bool:
        """Write an openStream now; False when the provider is not taking what we write (and
        ``queue``): it is then the backlog's to write."""
        timeout = self.core.config.call_timeout
        try:
            fut = conn.request_soon(OPEN_STREAM, params, timeout=timeout)
        except KikiError:
            return True  # closed: provider_gone follows
        if fut is None:
            if queue and conn.write_buffer_size:
                return False
            # Every in-flight slot is taken: one task waits for one (bounded by upstreams).
            fut = asyncio.ensure_future(conn.request(OPEN_STREAM, params, timeout=timeout))
        self.opening[upstream] = fut
        fut.add_done_callback(functools.partial(self._opened, upstream))
        return True

    def _backlog(self, provider: Provider) -> _Backlog:
        backlog = self.backlogs.get(provider.id)
        if backlog is None:
            assert provider.connection is not None
            backlog = self.backlogs[provider.id] = _Backlog(provider.connection)
        if backlog.task is None or backlog.task.done():
            backlog.task = asyncio.get_running_loop().create_task(self._flush(backlog))
        return backlog

    def _check_backlog(self, provider: Provider, backlog: _Backlog) -> None:
        conn = backlog.conn
        if len(backlog) <= MAX_PROVIDER_BACKLOG and conn.write_buffer_size <= MAX_PROVIDER_BUFFER:
            return
        if conn.closed or conn.state.get("stream_dropped"):
            return
        conn.state["stream_dropped"] = True
        self.counters["stream_providers_dropped"] += 1
        log.warning(
            "%s: disconnected: it does not read what it is sent (%d stream messages waiting, "
            "%d bytes unsent)",
            conn.name,
            len(backlog),
            conn.write_buffer_size,
        )
        task = asyncio.get_running_loop().create_task(conn.close())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self, backlog: _Backlog) -> None:
        """Write a provider's backlog as the provider reads: closes first (they free it)."""
        conn = backlog.conn
        try:
            while backlog:
                closes = [(CLOSE_STREAM, {"stream": t}) for t in backlog.closes]
                backlog.closes.clear()
                await conn.notify_many(closes)  # also waits while the transport is paused
                while backlog.opens and not backlog.closes:
                    upstream = next(iter(backlog.opens))
                    params = backlog.opens.pop(upstream)
                    if not self._send_open(conn, upstream, params, queue=False):
                        break
                    if conn.write_buffer_size:
                        await conn.notify_many([])
        except KikiError:
            return  # closed: provider_gone clears it

    def _opened(self, upstream: int, fut: asyncio.Future[Any]) -> None:
        if self.opening.get(upstream) is fut:
            del self.opening[upstream]
        if fut.cancelled():
            return  # closed before it was answered
        error = fut.exception()
        if error is None:
            self.carry(self.fanout.upstream_opened(upstream))
        elif not isinstance(error, PeerGone) and upstream in self.token_of:
            # The provider may have started it all the same (it timed out): it is told to stop.
            found = self.tokens.get(self.token_of[upstream])
            token = self.token_of[upstream]
            self._forget_upstream(upstream)
            if found is not None:
                self._queue_close(found[1], token)
            detail = error.message if isinstance(error, KikiError) else str(error)
            self.carry(self.fanout.upstream_failed(upstream, detail))

    def _close(self, action: CloseUpstream) -> None:
        if action.provider == self.core.own.id:
            for upstreams in self.own.values():
                upstreams.discard(action.upstream)
            return
        token = self.token_of.get(action.upstream)
        backlog = self.backlogs.get(action.provider)
        unsent = backlog is not None and backlog.opens.pop(action.upstream, None) is not None
        self._forget_upstream(action.upstream)
        if token is not None and not unsent:  # an open never written needs no close
            self._queue_close(action.provider, token)

    def _queue_close(self, pid: int, token: int) -> None:
        provider = self.core.stream_providers.get(pid)
        if provider is None or provider.connection is None or provider.connection.closed:
            return
        backlog = self.backlogs.get(pid)
        if (backlog is None or not backlog) and provider.connection.try_notify(
            CLOSE_STREAM, {"stream": token}
        ):
            return
        backlog = self._backlog(provider)
        backlog.closes[token] = None
        self._check_backlog(provider, backlog)

    def _rejected(self, action: Rejected) -> None:
        if action.provider == self.core.own.id:
            # The broker's own message broke its lexicon: its subscribers see it as lost.
            self.counters["stream_own_rejected"] += 1
            log.error("a message of the broker's own stream was rejected: %s", action.error)
            self.carry(self.fanout.skip(action.upstream))
            return
        token = self.token_of.get(action.upstream)
        provider = self.core.stream_providers.get(action.provider)
        if token is None or provider is None or provider.connection is None:
            return
        error = action.error.to_jsonrpc()
        conn: Connection = provider.connection
        # A provider flooding bad messages is told of them while it reads what it is told.
        if not conn.try_notify(REJECTED, {"stream": token, "error": error}):
            self.counters["stream_rejected_untold"] += 1

    def send_soon(self, conn: Connection, method: str, params: dict[str, Any]) -> None:
        """A wake-up notification (an MCP host's ``resources/updated``): now if the transport
        takes it, else once, by one task per connection, however often it is asked for
        meanwhile (equal ones coalesce, so what waits is bounded by the subscriptions)."""
        if conn.closed:
            return
        unsent: dict[bytes, tuple[str, dict[str, Any]]] | None = conn.state.get("stream_unsent")
        if not unsent and conn.try_notify(method, params):
            return
        if unsent is None:
            unsent = conn.state["stream_unsent"] = {}
        unsent[orjson.dumps([method, params], option=orjson.OPT_SORT_KEYS)] = (method, params)
        task: asyncio.Task[None] | None = conn.state.get("stream_unsent_task")
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(_send_unsent(conn, unsent))
            conn.state["stream_unsent_task"] = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def gauges(self) -> dict[str, int]:
        """getInfo's stream counters: what is open now, and the fan-out's running totals."""
        fanout = self.fanout
        out = {
            "stream_subscriptions": len(fanout.subscriptions()),
            "stream_topics": fanout.topic_count(),
            "stream_upstreams": len(fanout.upstreams()),
            "stream_writers": len(self.writers),
        }
        for name, value in fanout.counters.items():
            out[f"stream_{name}"] = value
        return out


async def _send_unsent(conn: Connection, unsent: dict[bytes, tuple[str, dict[str, Any]]]) -> None:
    with contextlib.suppress(KikiError):
        while unsent:
            items = list(unsent.values())
            unsent.clear()
            await conn.notify_many(items)
    unsent.clear()


def _note(item: Item) -> tuple[str, dict[str, Any]]:
    if isinstance(item, Message):
        return EVENT, {"subscription": item.sub, "seq": item.seq, "message": item.message}
    if isinstance(item, Lost):
        return LOST, {"subscription": item.sub, "count": item.count}
    if isinstance(item, Status):
        status = {
            "subscription": item.sub,
            "state": item.state,
            "reason": item.reason,
            "interruptions": item.interruptions,
        }
        return STATUS, status
    assert isinstance(item, Ended)
    return ENDED, {"subscription": item.sub, "reason": item.reason, "message": item.detail}
