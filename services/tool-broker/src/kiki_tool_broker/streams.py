"""Event streams (lexicon ``subscription`` types): the broker's fan-out, as pure state.

No asyncio, no sockets (in the manner of h11): the server calls a method with plain data when
something happens on a connection and gets back the actions to carry out; a subscriber's items
are taken with :meth:`StreamFanout.drain` when its connection can be written to. Identities
(connections, subscriptions, upstreams) are plain ints the server maps to its objects.

Model
-----
* A *topic* is (NSID, params), the params canonicalised (sorted keys, compact JSON), so equal
  params share. A topic lives while it has subscribers; all of them share ONE *upstream*
  subscription at the provider that declared the NSID (:class:`OpenUpstream` when the first
  subscriber comes, :class:`CloseUpstream` when the last leaves). Upstream ids are never
  reused, so a message or an answer for an upstream already closed is recognised as stale.
* A provider declares the NSIDs it serves all or nothing (:meth:`StreamFanout.declare`,
  :class:`~libkiki.errors.Conflict` if any is served already). When it goes away
  (:meth:`~StreamFanout.provider_gone`) or withdraws an NSID, its upstreams end and every
  subscriber stays, told ``waiting`` with the reason (:class:`Status`); when a provider
  declares the NSID again, each waiting topic is opened upstream again and its subscribers are
  told ``live`` once it accepts. Nothing is asked of the client.
* Each message from an upstream is checked (the injected ``validate``: the lexicon validator
  lives elsewhere) and offered to every subscriber of the topic with that subscriber's own
  sequence number (1, 2, 3, ... per subscription: a number for every message offered to it).
* Every subscriber has a bounded queue (:class:`~kiki_tool_broker.stream_queue.SubscriberQueue`:
  it loses its OLDEST messages when it is not drained, told as :class:`Lost` with the exact
  count, and keeps interruptions as merged gaps). Other subscribers are not affected.
* A subscription the broker ends (the provider refused or ended the upstream, a policy reload
  denies it, shutdown) gets an :class:`Ended` item after what is queued, and is forgotten once
  that is drained or its connection closes. Subscribe and every end are returned as
  :class:`Audit` actions; individual messages are not audited.

Memory: at most ``max_subscriptions`` queues of at most ``max_queue_bytes`` (message sizes as
given to :meth:`~StreamFanout.publish`, default the compact JSON's length) and
``max_queue_messages`` each; subscribers of one topic hold references to the same message
objects, so the real figure is per topic rather than per subscriber.

The wire (``kiki/subscribe``, ``kiki/event``/``lost``/``streamStatus``/``ended``,
``kiki/openStream``/``closeStream``/``emit``/``endStream``/``rejected``) and the MCP resources
mapping are the service README's "Event streams"; :mod:`kiki_tool_broker.events`,
:mod:`kiki_tool_broker.upstreams`, :mod:`kiki_tool_broker.stream_writers` and
:mod:`kiki_tool_broker.mcp_resources` carry this module's actions out on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import orjson

from kiki_tool_broker.stream_queue import (
    Ended,
    EndReason,
    Item,
    Lost,
    Message,
    QueueStats,
    Status,
    SubId,
    SubscriberQueue,
    WaitReason,
)
from libkiki.errors import Conflict, InvalidParams, KikiError, LimitExceeded, NotFound

if TYPE_CHECKING:
    from kiki_tool_broker.subscribing import Subscriber

__all__ = [
    "Action",
    "Audit",
    "CloseUpstream",
    "Ended",
    "Item",
    "Lost",
    "Message",
    "OpenUpstream",
    "QueueStats",
    "Readable",
    "Rejected",
    "Status",
    "StreamFanout",
    "Subscribed",
    "canonical_params",
]

ConnId = int  # the server's id for a connection (a client, a provider, or both)
UpstreamId = int

State = Literal["opening", "live", "waiting"]

DEFAULT_MAX_SUBSCRIPTIONS = 1024
DEFAULT_MAX_PER_CONNECTION = 64
DEFAULT_MAX_QUEUE_MESSAGES = 256
DEFAULT_MAX_QUEUE_BYTES = 256 * 1024


# -- what the server carries out ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenUpstream:
    upstream: UpstreamId
    provider: ConnId
    nsid: str
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CloseUpstream:
    upstream: UpstreamId
    provider: ConnId


@dataclass(frozen=True, slots=True)
class Readable:
    """``sub``'s queue went from empty to not empty: drain it when ``conn`` can be written."""

    conn: ConnId
    sub: SubId


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message from ``provider`` was dropped (``error`` says why): tell the provider."""

    upstream: UpstreamId
    provider: ConnId
    error: KikiError


@dataclass(frozen=True, slots=True)
class Audit:
    """A line for the audit log; ``caller`` is what :meth:`StreamFanout.subscribe` was given
    (the principal and, for a delegated subscription, its relay), so that an end the broker
    decides (a close, a refused upstream) names who subscribed."""

    event: Literal["subscribe", "unsubscribe"]
    conn: ConnId
    sub: SubId
    nsid: str
    params: dict[str, Any]
    reason: EndReason | None = None
    caller: Subscriber | None = None


Action = OpenUpstream | CloseUpstream | Readable | Rejected | Audit


@dataclass(frozen=True, slots=True)
class Subscribed:
    sub: SubId
    state: State


# -- internal state ---------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Upstream:
    id: UpstreamId
    provider: ConnId
    live: bool = False


@dataclass(eq=False, slots=True)
class _Topic:
    nsid: str
    params: dict[str, Any]
    key: tuple[str, bytes]
    subs: dict[SubId, _Subscriber] = field(default_factory=dict)
    upstream: _Upstream | None = None


@dataclass(eq=False, slots=True)
class _Subscriber:
    id: SubId
    conn: ConnId
    topic: _Topic
    queue: SubscriberQueue
    told: State = "opening"  # the state it was last given (subscribe's answer, or a Status)
    ended: bool = False
    caller: Subscriber | None = None


def _accept(nsid: str, message: Any) -> None:
    return None


def _json_size(message: Any) -> int:
    return len(orjson.dumps(message))


def canonical_params(params: Any) -> bytes:
    """The params' identity: compact JSON with sorted keys (raises InvalidParams)."""
    if not isinstance(params, dict):
        raise InvalidParams("params must be an object")
    try:
        return orjson.dumps(params, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        raise InvalidParams("params must be JSON") from None


class StreamFanout:
    """Topics, their upstreams and their subscribers' queues (see the module's docstring).

    ``validate(nsid, message)`` raises a :class:`~libkiki.errors.KikiError` for a message that
    breaks the NSID's lexicon. ``max_message_bytes`` (default ``max_queue_bytes``) bounds one
    message; larger ones are rejected, since they could never be queued.
    """

    def __init__(
        self,
        *,
        validate: Callable[[str, Any], None] = _accept,
        max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS,
        max_per_connection: int = DEFAULT_MAX_PER_CONNECTION,
        max_queue_messages: int = DEFAULT_MAX_QUEUE_MESSAGES,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        max_message_bytes: int | None = None,
    ) -> None:
        if min(max_subscriptions, max_per_connection, max_queue_messages, max_queue_bytes) < 1:
            raise ValueError("stream limits must be positive")
        self.validate = validate
        self.max_subscriptions = max_subscriptions
        self.max_per_connection = max_per_connection
        self.max_queue_messages = max_queue_messages
        self.max_queue_bytes = max_queue_bytes
        self.max_message_bytes = min(max_message_bytes or max_queue_bytes, max_queue_bytes)
        self._served: dict[str, ConnId] = {}  # NSID -> the provider that declared it
        self._topics: dict[tuple[str, bytes], _Topic] = {}
        self._upstreams: dict[UpstreamId, _Topic] = {}
        self._subs: dict[SubId, _Subscriber] = {}
        self._by_conn: dict[ConnId, set[SubId]] = {}
        self._next_sub = 1
        self._next_upstream = 1
        self.counters = {"published": 0, "lost": 0, "rejected": 0, "stale": 0, "opened": 0}

    # -- providers ------------------------------------------------------------------------

    def check_declare(self, provider: ConnId, nsids: Iterable[str]) -> list[str]:
        """What :meth:`declare` would refuse, raised, without changing anything (so that the
        server can make one all-or-nothing registration of tools and streams)."""
        names = sorted(set(nsids))
        taken = {n: self._served[n] for n in names if n in self._served}
        if taken:
            raise Conflict("already served: " + ", ".join(taken), data={"nsids": sorted(taken)})
        return names

    def declare(self, provider: ConnId, nsids: Iterable[str]) -> list[Action]:
        """``provider`` serves ``nsids`` from now on: all of them, or none (Conflict)."""
        names = self.check_declare(provider, nsids)
        actions: list[Action] = []
        for nsid in names:
            self._served[nsid] = provider
        for topic in list(self._topics.values()):
            if topic.upstream is None and topic.nsid in names:
                actions.append(self._open(topic, provider))
        return actions

    def withdraw(self, provider: ConnId, nsids: Iterable[str]) -> list[Action]:
        """``provider`` no longer serves ``nsids`` (all its own, else NotFound and nothing)."""
        names = set(nsids)
        foreign = sorted(n for n in names if self._served.get(n) != provider)
        if foreign:
            raise NotFound("not served by this provider: " + ", ".join(foreign))
        return self._drop_provider(provider, names, "providerWithdrew", close=True)

    def provider_gone(self, provider: ConnId) -> list[Action]:
        """The provider's connection closed: its NSIDs are free, their subscribers wait."""
        names = {n for n, p in self._served.items() if p == provider}
        return self._drop_provider(provider, names, "providerGone", close=False)

    def upstream_opened(self, upstream: UpstreamId) -> list[Action]:
        topic = self._upstreams.get(upstream)
        if topic is None or topic.upstream is None:
            self.counters["stale"] += 1
            return []
        return self._go_live(topic, topic.upstream)

    def upstream_failed(self, upstream: UpstreamId, detail: str | None = None) -> list[Action]:
        """The provider refused the upstream: its topic's subscribers end, ``refused``."""
        return self._end_topic(upstream, "refused", detail)

    def upstream_ended(self, upstream: UpstreamId, detail: str | None = None) -> list[Action]:
        """The provider ended the upstream itself: its subscribers end, ``providerEnded``."""
        return self._end_topic(upstream, "providerEnded", detail)

    def publish(
        self, provider: ConnId, upstream: UpstreamId, message: Any, *, size: int | None = None
    ) -> list[Action]:
        """A message from ``provider`` on ``upstream``, for every subscriber of its topic."""
        topic = self._upstreams.get(upstream)
        up = topic.upstream if topic is not None else None
        if topic is None or up is None or up.provider != provider:
            self.counters["stale"] += 1  # closed meanwhile, or not this provider's
            return []
        try:
            n = _json_size(message) if size is None else size
            if n > self.max_message_bytes:
                raise LimitExceeded(
                    f"message of {n} bytes over the limit of {self.max_message_bytes}",
                    data={"limit": self.max_message_bytes, "size": n},
                )
            self.validate(topic.nsid, message)
        except KikiError as exc:
            self.counters["rejected"] += 1
            return [Rejected(upstream, provider, exc)]
        except TypeError:  # not JSON at all
            self.counters["rejected"] += 1
            return [Rejected(upstream, provider, InvalidParams("message must be JSON"))]
        actions: list[Action] = []
        if not up.live:  # a message before the answer to openStream: it accepted
            actions.extend(self._go_live(topic, up))
        self.counters["published"] += 1
        counters = self.counters
        for sub in topic.subs.values():
            was_empty, dropped = sub.queue.offer(message, n)
            if dropped:
                counters["lost"] += dropped
            if was_empty:
                actions.append(Readable(sub.conn, sub.id))
        return actions

    def skip(self, upstream: UpstreamId) -> list[Action]:
        """A message of ``upstream`` that no subscriber gets (the broker's own, rejected):
        each is told it as lost, so its sequence numbers still count every message."""
        topic = self._upstreams.get(upstream)
        if topic is None:
            return []
        actions: list[Action] = []
        for sub in topic.subs.values():
            self.counters["lost"] += 1
            if sub.queue.skip():
                actions.append(Readable(sub.conn, sub.id))
        return actions

    # -- clients --------------------------------------------------------------------------

    def subscribe(
        self,
        conn: ConnId,
        nsid: str,
        params: dict[str, Any] | None = None,
        *,
        caller: Subscriber | None = None,
    ) -> tuple[Subscribed, list[Action]]:
        """A new subscription of ``conn`` (policy and the params' lexicon are checked before);
        ``caller`` is carried into its :class:`Audit` actions."""
        canon = canonical_params({} if params is None else params)
        if len(self._subs) >= self.max_subscriptions:
            raise LimitExceeded(
                "too many subscriptions on the broker", data={"limit": self.max_subscriptions}
            )
        if len(self._by_conn.get(conn, ())) >= self.max_per_connection:
            raise LimitExceeded(
                "too many subscriptions on this connection",
                data={"limit": self.max_per_connection},
            )
        actions: list[Action] = []
        key = (nsid, canon)
        topic = self._topics.get(key)
        if topic is None:
            topic = self._topics[key] = _Topic(nsid, orjson.loads(canon), key)
            provider = self._served.get(nsid)
            if provider is not None:
                actions.append(self._open(topic, provider))
        state: State = "waiting"
        if topic.upstream is not None:
            state = "live" if topic.upstream.live else "opening"
        queue = SubscriberQueue(self.max_queue_messages, self.max_queue_bytes)
        sub = _Subscriber(self._next_sub, conn, topic, queue, told=state, caller=caller)
        self._next_sub += 1
        topic.subs[sub.id] = sub
        self._subs[sub.id] = sub
        self._by_conn.setdefault(conn, set()).add(sub.id)
        actions.append(Audit("subscribe", conn, sub.id, nsid, topic.params, caller=caller))
        return Subscribed(sub.id, state), actions

    def unsubscribe(self, conn: ConnId, sub: SubId) -> list[Action]:
        """``conn`` ends its subscription ``sub`` (NotFound if it has none such)."""
        s = self._subs.get(sub)
        if s is None or s.conn != conn:
            raise NotFound(f"no subscription {sub} on this connection")
        return self._remove(s, "unsubscribed")

    def end(self, sub: SubId, reason: EndReason, detail: str | None = None) -> list[Action]:
        """The broker ends ``sub`` (policy reload, shutdown): :class:`Ended` is queued last."""
        s = self._subs.get(sub)
        if s is None or s.ended:
            return []
        actions = self._detach(s, reason)
        if s.queue.end(Ended(s.id, reason, detail)):
            actions.append(Readable(s.conn, s.id))
        return actions

    def connection_closed(self, conn: ConnId) -> list[Action]:
        """Every subscription of ``conn`` is gone (its provider side: :meth:`provider_gone`)."""
        actions: list[Action] = []
        for sub in sorted(self._by_conn.get(conn, ())):
            actions.extend(self._remove(self._subs[sub], "closed"))
        self._by_conn.pop(conn, None)
        return actions

    def drain(self, sub: SubId, max_items: int | None = None) -> list[Item]:
        """Take up to ``max_items`` queued entries (all by default) of ``sub``, in order.

        A subscription whose :class:`Ended` is taken is forgotten."""
        s = self._subs.get(sub)
        if s is None:
            return []
        out, ended = s.queue.drain(sub, max_items)
        if ended:
            self._forget(s)
        return out

    # -- introspection --------------------------------------------------------------------

    def stats(self, sub: SubId) -> QueueStats:
        return self._subs[sub].queue.stats()

    def subscriptions(self, conn: ConnId | None = None) -> list[SubId]:
        if conn is None:
            return sorted(self._subs)
        return sorted(self._by_conn.get(conn, ()))

    def upstreams(self) -> dict[UpstreamId, tuple[ConnId, str, dict[str, Any]]]:
        """Open (or opening) upstreams: provider, NSID, params."""
        return {
            u: (t.upstream.provider, t.nsid, t.params)
            for u, t in self._upstreams.items()
            if t.upstream is not None
        }

    def topic_count(self) -> int:
        return len(self._topics)

    def subscription_count(self) -> int:
        return len(self._subs)

    def upstream_count(self) -> int:
        """How many :meth:`upstreams` there are, without making them."""
        return sum(1 for t in self._upstreams.values() if t.upstream is not None)

    def served_by(self, nsid: str) -> ConnId | None:
        """The provider that declared ``nsid``, if any."""
        return self._served.get(nsid)

    def serving(self) -> list[tuple[str, ConnId]]:
        """Every NSID served now, with its provider, in NSID order."""
        return sorted(self._served.items())

    def served(self, provider: ConnId) -> list[str]:
        """The NSIDs ``provider`` declared."""
        return sorted(n for n, p in self._served.items() if p == provider)

    def pending(self, sub: SubId) -> int:
        """Items queued for ``sub`` (0 when there is no such subscription)."""
        s = self._subs.get(sub)
        return 0 if s is None else len(s.queue)

    # -- internals ------------------------------------------------------------------------

    def _open(self, topic: _Topic, provider: ConnId) -> OpenUpstream:
        up = _Upstream(self._next_upstream, provider)
        self._next_upstream += 1
        topic.upstream = up
        self._upstreams[up.id] = topic
        self.counters["opened"] += 1
        return OpenUpstream(up.id, provider, topic.nsid, topic.params)

    def _go_live(self, topic: _Topic, up: _Upstream) -> list[Action]:
        if up.live:
            return []
        up.live = True
        actions: list[Action] = []
        for sub in topic.subs.values():
            if sub.told != "live":
                sub.told = "live"
                if sub.queue.status("live"):
                    actions.append(Readable(sub.conn, sub.id))
        return actions

    def _drop_provider(
        self, provider: ConnId, names: set[str], reason: WaitReason, *, close: bool
    ) -> list[Action]:
        actions: list[Action] = []
        for nsid in names:
            del self._served[nsid]
        for topic in list(self._topics.values()):
            up = topic.upstream
            if up is None or up.provider != provider or topic.nsid not in names:
                continue
            topic.upstream = None
            del self._upstreams[up.id]
            if close:
                actions.append(CloseUpstream(up.id, provider))
            for sub in topic.subs.values():
                sub.told = "waiting"
                if sub.queue.status("waiting", reason, interrupted=True):
                    actions.append(Readable(sub.conn, sub.id))
        return actions

    def _end_topic(
        self, upstream: UpstreamId, reason: EndReason, detail: str | None
    ) -> list[Action]:
        topic = self._upstreams.get(upstream)
        if topic is None:
            self.counters["stale"] += 1
            return []
        # The provider has ended it already: no closeStream goes back for it.
        if topic.upstream is not None:
            del self._upstreams[topic.upstream.id]
            topic.upstream = None
        actions: list[Action] = []
        for sub in list(topic.subs.values()):
            actions.extend(self.end(sub.id, reason, detail))
        return actions

    def _detach(self, sub: _Subscriber, reason: EndReason) -> list[Action]:
        """Take ``sub`` off its topic (closing the upstream after the last) and audit it."""
        sub.ended = True
        topic = sub.topic
        del topic.subs[sub.id]
        actions: list[Action] = [
            Audit("unsubscribe", sub.conn, sub.id, topic.nsid, topic.params, reason, sub.caller)
        ]
        if not topic.subs:
            del self._topics[topic.key]
            up = topic.upstream
            if up is not None:
                topic.upstream = None
                del self._upstreams[up.id]
                actions.append(CloseUpstream(up.id, up.provider))
        return actions

    def _remove(self, sub: _Subscriber, reason: EndReason) -> list[Action]:
        actions = [] if sub.ended else self._detach(sub, reason)
        self._forget(sub)
        return actions

    def _forget(self, sub: _Subscriber) -> None:
        self._subs.pop(sub.id, None)
        mine = self._by_conn.get(sub.conn)
        if mine is not None:
            mine.discard(sub.id)
            if not mine:
                del self._by_conn[sub.conn]
        sub.queue.clear()
