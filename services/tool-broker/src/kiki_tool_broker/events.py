"""The event streams' connection layer: carries out what :class:`~kiki_tool_broker.streams.
StreamFanout` decides, on the broker's connections, and routes each of its actions to the part
that carries it out.

* Clients: ``kiki/subscribe`` (decided by :class:`~kiki_tool_broker.subscribing.
  Subscriptions`, a refusal audited), ``kiki/unsubscribe`` and ``kiki/listStreams``; what their
  queues hold is written by :mod:`kiki_tool_broker.stream_writers`, or, for MCP hosts, read as
  resources (:mod:`kiki_tool_broker.mcp_resources`).
* Providers: their upstreams, ``kiki/emit`` and ``kiki/endStream`` are
  :mod:`kiki_tool_broker.upstreams`'; here, what registering and leaving do to the
  subscriptions (a topic reopened on another provider is re-checked against the policy).
* The broker's own streams, provided in-process: ``dev.kiki.tools.subscribeProviders`` and
  ``dev.kiki.tools.subscribeAudit``.
* Policy reloads and shutdown end what they must; subscribe and every end are audit lines,
  written after everything else the action does. A subscribe whose line cannot be written
  fails (-32603) and is undone; an end's is logged and counted (the end stands).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar

from kiki_tool_broker.core import BrokerCore, Who
from kiki_tool_broker.mcp_resources import ResourceStreams
from kiki_tool_broker.registry import Provider
from kiki_tool_broker.results import outcome_of
from kiki_tool_broker.stream_writers import StreamWriters
from kiki_tool_broker.streams import (
    Action,
    Audit,
    CloseUpstream,
    OpenUpstream,
    Readable,
    Rejected,
    Subscribed,
)
from kiki_tool_broker.subscribing import Asked, Subscriber
from kiki_tool_broker.upstreams import EMIT, END_STREAM, Upstreams
from libkiki.errors import InvalidParams
from libkiki.rpc import Connection, Methods, RequestContext

log = logging.getLogger(__name__)

SUBSCRIBE: Final = "kiki/subscribe"
UNSUBSCRIBE: Final = "kiki/unsubscribe"
LIST_STREAMS: Final = "kiki/listStreams"

SUBSCRIBE_PROVIDERS: Final = "dev.kiki.tools.subscribeProviders"
SUBSCRIBE_AUDIT: Final = "dev.kiki.tools.subscribeAudit"
OWN_STREAMS: Final = (SUBSCRIBE_PROVIDERS, SUBSCRIBE_AUDIT)

AuditWriter = Callable[..., None]
T = TypeVar("T")


class EventStreams:
    def __init__(self, core: BrokerCore, audit: AuditWriter, counters: Any) -> None:
        self.core = core
        self.fanout = core.streams
        self.subscriptions = core.subscriptions
        self.audit = audit  # writes one audit line (kwargs of AuditLog.append), then publishes
        self.counters = counters
        self._cids = itertools.count(1)
        self.writers = StreamWriters(self.fanout, counters)
        self.upstreams = Upstreams(core, self.carry, counters)
        # subscription -> who holds it (re-checked on policy reloads and reopenings)
        self.subs: dict[int, Subscriber] = {}
        self.sub_nsid: dict[int, str] = {}
        self.own: dict[str, set[int]] = {n: set() for n in OWN_STREAMS}  # own upstreams
        self.announced: set[int] = set()  # providers told as #connected
        self.resources = ResourceStreams(self)

    def add_methods(self, m: Methods) -> None:
        m.register_sync(SUBSCRIBE, self.subscribe)
        m.register_sync(UNSUBSCRIBE, self.unsubscribe)
        m.register_sync(LIST_STREAMS, self.list_streams)
        m.inline(EMIT)(self.upstreams.emit)
        m.inline(END_STREAM)(self.upstreams.end_stream)
        self.resources.add_methods(m)

    # -- clients -----------------------------------------------------------------------------

    def cid(self, conn: Connection) -> int:
        cid: int | None = conn.state.get("stream_cid")
        if cid is None:
            cid = conn.state["stream_cid"] = next(self._cids)
        return cid

    # Kiki's own methods are strict: a key they do not know is -32602.
    def subscribe(self, request: RequestContext, nsid: Any, params: Any = None) -> dict[str, Any]:
        """As a call: the subscribe's audit line is written before it is answered (after
        everything else it does), and one that cannot be written (a full disk) is its answer,
        -32603, the subscription undone (:meth:`_undo`)."""
        subscribed, actions = self.open(request, nsid, params)
        conn = request.connection
        cid = self.cid(conn)
        self.writers.open(cid, conn)
        self.carry([a for a in actions if not isinstance(a, Audit)])
        try:
            for action in actions:
                if isinstance(action, Audit):
                    self._audit(action)
        except Exception:
            self._undo(cid, subscribed.sub)
            raise
        return {"subscription": subscribed.sub, "state": subscribed.state}

    def _undo(self, cid: int, sub: int) -> None:
        """A subscription whose subscribe could not be audited is taken back, unaudited as
        it was never given: its queue dropped, its upstream closed if it was the topic's last
        (the provider told, as for an unsubscribe), its connection's writer closed if it was
        that connection's only subscription."""
        self.subs.pop(sub, None)
        self.sub_nsid.pop(sub, None)
        if sub in self.fanout.subscriptions(cid):
            undone = self.fanout.unsubscribe(cid, sub)
            self.carry([a for a in undone if not isinstance(a, Audit)])
        if not self.fanout.subscriptions(cid):
            self.writers.close(cid)

    def open(
        self, request: RequestContext, nsid: Any, params: Any
    ) -> tuple[Subscribed, list[Action]]:
        """A subscription of the request's connection, decided by the core (a refusal is
        audited and raised); its actions are the caller's to carry, once it can route them."""
        cid = self.cid(request.connection)
        asked = Asked(str(nsid), params if isinstance(params, dict) else {})
        subscriber, (subscribed, actions) = self.decided(
            request, asked, lambda s: (s, self.subscriptions.subscribe(s, cid, nsid, params))
        )
        self.held(subscriber, subscribed.sub, asked.tool)
        return subscribed, actions

    def decided(
        self, request: RequestContext, asked: Asked, decide: Callable[[Subscriber], T]
    ) -> T:
        """``decide`` for the request's :class:`Subscriber` (the caller, or the person a
        trusted delegate names): whatever refuses, the subscriber's own claim included, is
        audited as a ``subscribe`` of ``asked`` (which ``decide`` may name better once it knows
        more) and raised."""
        who = self.who(request)
        behalf = None  # the person a trusted delegate names, once it is known to be one
        try:
            subscriber = self.subscriptions.subscriber(who, request.meta)
            behalf = subscriber.on_behalf_of
            return decide(subscriber)
        except Exception as exc:
            outcome, code = outcome_of(exc)
            self.audit(
                caller=who.view,
                tool=asked.tool,
                outcome=outcome,
                code=code,
                duration_us=0,
                arguments=asked.arguments,
                event="subscribe",
                on_behalf_of=behalf,
            )
            raise

    def held(self, subscriber: Subscriber, sub: int, nsid: str) -> None:
        """``sub`` is ``subscriber``'s: re-decided for it on reloads and reopenings."""
        self.subs[sub] = subscriber
        self.sub_nsid[sub] = nsid

    def list_streams(self, request: RequestContext, cursor: Any = None) -> dict[str, Any]:
        return self.subscriptions.list_streams(self.who(request), cursor)

    def unsubscribe(self, request: RequestContext, subscription: Any) -> dict[str, Any]:
        if not isinstance(subscription, int) or isinstance(subscription, bool):
            raise InvalidParams("subscription must be an integer")
        self.carry(self.fanout.unsubscribe(self.cid(request.connection), subscription))
        return {}

    def end_subscription(self, conn: Connection, sub: int) -> None:
        """``conn`` ends ``sub`` (audited); nothing to do when it is gone already."""
        if sub in self.fanout.subscriptions(self.cid(conn)):
            self.carry(self.fanout.unsubscribe(self.cid(conn), sub))

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
        self.writers.close(cid)
        self.carry(self.fanout.connection_closed(cid))

    def policy_reloaded(self) -> None:
        """End (``denied``) the subscriptions the policy no longer allows."""
        for sub, subscriber in list(self.subs.items()):
            allowed, reason = self.subscriptions.still_allowed(subscriber, self.sub_nsid[sub])
            if not allowed:
                detail = f"the policy no longer allows it: {reason}"
                self.carry(self.fanout.end(sub, "denied", detail))

    def shutdown(self) -> None:
        for sub in self.fanout.subscriptions():
            self.carry(self.fanout.end(sub, "shutdown"))

    # -- providers ---------------------------------------------------------------------------

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
            allowed, reason = self.subscriptions.still_allowed(subscriber, nsid)
            if not allowed:
                detail = f"the policy does not allow it: {reason}"
                ended.extend(self.fanout.end(sub, "denied", detail))
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
        self.upstreams.provider_gone(provider)
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
                self.writers.readable(action.conn, action.sub)
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
        subscriber = action.caller
        assert subscriber is not None  # every subscription the broker makes names its subscriber
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

    # -- the broker's own upstreams, in process; the rest are the providers' ----------------

    def _open(self, action: OpenUpstream) -> None:
        if action.provider != self.core.own.id:
            self.upstreams.open(action)
            return
        self.own.setdefault(action.nsid, set()).add(action.upstream)
        self.carry(self.fanout.upstream_opened(action.upstream))

    def _close(self, action: CloseUpstream) -> None:
        if action.provider != self.core.own.id:
            self.upstreams.close(action)
            return
        for upstreams in self.own.values():
            upstreams.discard(action.upstream)

    def _rejected(self, action: Rejected) -> None:
        if action.provider != self.core.own.id:
            self.upstreams.rejected(action)
            return
        # The broker's own message broke its lexicon: its subscribers see it as lost.
        self.counters["stream_own_rejected"] += 1
        log.error("a message of the broker's own stream was rejected: %s", action.error)
        self.carry(self.fanout.skip(action.upstream))

    def send_soon(self, conn: Connection, method: str, params: dict[str, Any]) -> None:
        """A wake-up notification (an MCP host's): :meth:`StreamWriters.send_soon`."""
        self.writers.send_soon(conn, method, params)

    def add_gauges(self, out: dict[str, int]) -> None:
        """getInfo's stream counters, put into ``out`` (its counters, on every call of it):
        what is open now, and the fan-out's running totals, each named ``stream_<total>``."""
        fanout = self.fanout
        out["stream_subscriptions"] = fanout.subscription_count()
        out["stream_topics"] = fanout.topic_count()
        out["stream_upstreams"] = fanout.upstream_count()
        out["stream_writers"] = len(self.writers)
        for name, value in fanout.counters.items():
            out[f"stream_{name}"] = value
