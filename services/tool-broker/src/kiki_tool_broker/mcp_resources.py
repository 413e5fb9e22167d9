"""Event streams for MCP hosts, as subscribable resources.

Each topic (a subscription NSID with its params) is a resource, ``kiki-stream://NSID?PARAMS``,
the params as a query string typed by the lexicon's ``parameters`` (``?room=a&limit=3``; an
array parameter repeats its key). ``resources/templates/list`` offers one template per
subscription lexicon the caller may subscribe to (``kiki-stream://NSID{?room,limit}``), and
``resources/list`` the streams that need no params.

* ``resources/subscribe {uri}`` is ``kiki/subscribe`` on this connection: the same policy
  (access ``subscribe``, a delegate's person included), limits, queue and audit lines (a bad
  URI's refusal too). A URI has one subscriber per connection, as MCP names the subscription
  by its URI alone: asked again for the same subscriber it is nothing to do, for anyone else
  decided for them and then refused. ``resources/unsubscribe {uri}`` ends it
  (audited); it is idempotent, as hosts unsubscribe while tidying up.
* ``notifications/resources/updated {uri}`` is sent when the subscription's queue goes from
  empty to not empty (the fan-out's :class:`~kiki_tool_broker.streams.Readable`): once, however
  many messages follow, until the host reads.
* ``resources/read {uri}`` drains the queue and returns its items as one JSON text content:
  ``{"uri", "nsid", "params", "subscribed", "items": [...]}``, each item ``{"seq", "message"}``,
  ``{"lost": N}``, ``{"status", "reason", "interruptions"}`` or ``{"ended", "message"}`` (the
  last: the subscription is gone once that is read). A stream nobody subscribed to reads as
  ``subscribed: false`` with no items: events are not state, there is nothing to read back.
* MCP 2026-07-28 has no ``resources/subscribe``: a ``subscriptions/listen`` stream names the
  URIs in ``notifications.resourceSubscriptions``. Each is subscribed as above for as long as
  the stream lasts; those refused (policy, a bad URI, a limit) are left out of the honored
  filter, and the refusal is audited. Their ``updated`` notifications carry the stream's id and
  are held until the stream's acknowledgement has been sent (a client drops what comes before).

The pull model is deliberate: a host that reads slowly is just a subscriber that does not drain,
with the same bounded queue and the same exact ``lost`` count as any other, and the broker
sends it one small notification per read, not every message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, quote, urlsplit

import orjson

from kiki_tool_broker import protocol as mcp
from kiki_tool_broker.streams import Action, Ended, Item, Lost, Message, Status, Subscribed
from kiki_tool_broker.subscribing import Asked, Subscriber
from libkiki.errors import Conflict, InvalidParams, KikiError, PermissionDenied
from libkiki.lexicon.model import ArrayType, BooleanType, IntegerType, SubscriptionType
from libkiki.rpc import Connection, Methods, RequestContext

if TYPE_CHECKING:
    from kiki_tool_broker.events import EventStreams

SCHEME: Final = "kiki-stream"
UPDATED: Final = "notifications/resources/updated"
MIME: Final = "application/json"
MAX_URI: Final = 2048

# A subscription of a connection: (listen stream id or None for resources/subscribe, uri).
Key = tuple[Any, str]
# A subscription opened: for whom, and the fan-out's answer.
Opened = tuple[Subscriber, Subscribed, list[Action]]


# -- URIs --------------------------------------------------------------------------------------


def _parameters(streams: EventStreams, nsid: str) -> dict[str, Any]:
    """The lexicon's parameter types by name (InvalidParams when ``nsid`` is no stream)."""
    streams.core.catalog.stream(nsid)
    _, main = streams.core.catalog.registry.resolve(nsid)
    assert isinstance(main, SubscriptionType)
    return dict(main.parameters.properties) if main.parameters is not None else {}


def _typed(name: str, kind: Any, text: str) -> Any:
    if isinstance(kind, IntegerType):
        try:
            return int(text)
        except ValueError:
            raise InvalidParams(f"uri: {name} must be an integer") from None
    if isinstance(kind, BooleanType):
        if text not in ("true", "false"):
            raise InvalidParams(f"uri: {name} must be true or false")
        return text == "true"
    return text


def parse_uri(streams: EventStreams, uri: object) -> tuple[str, dict[str, Any]]:
    """The NSID and params a ``kiki-stream:`` URI names; the params typed by its lexicon (their
    values are checked by the lexicon when subscribing)."""
    if not isinstance(uri, str) or len(uri) > MAX_URI:
        raise InvalidParams("uri must be a string of at most 2048 characters")
    parts = urlsplit(uri)
    if parts.scheme != SCHEME or not parts.netloc or parts.path or parts.fragment:
        raise InvalidParams(f"uri must be {SCHEME}://NSID or {SCHEME}://NSID?PARAMS")
    nsid = parts.netloc
    kinds = _parameters(streams, nsid)
    params: dict[str, Any] = {}
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise InvalidParams("uri: its query is not name=value pairs") from None
    for name, text in pairs:
        kind = kinds.get(name)
        if isinstance(kind, ArrayType):
            params.setdefault(name, []).append(_typed(name, kind.items, text))
        elif name in params:
            raise InvalidParams(f"uri: {name} given twice")
        else:
            params[name] = _typed(name, kind, text)
    return nsid, params


def _audit_name(uri: object) -> str:
    """What a refused subscribe of ``uri`` is audited as before its URI is parsed: the NSID it
    names, else the URI as given (the audit log cuts what is longer than an NSID)."""
    text = str(uri)[:MAX_URI]
    try:
        parts = urlsplit(text)
    except ValueError:
        return text
    return parts.netloc if parts.scheme == SCHEME and parts.netloc else text


def template(nsid: str, names: list[str]) -> str:
    """The RFC 6570 template of a stream's URIs."""
    query = "{?" + ",".join(names) + "}" if names else ""
    return f"{SCHEME}://{quote(nsid, safe='.')}{query}"


# -- items as JSON -----------------------------------------------------------------------------


def item_json(item: Item) -> dict[str, Any]:
    if isinstance(item, Message):
        return {"seq": item.seq, "message": item.message}
    if isinstance(item, Lost):
        return {"lost": item.count}
    if isinstance(item, Status):
        return {"status": item.state, "reason": item.reason, "interruptions": item.interruptions}
    assert isinstance(item, Ended)
    return {"ended": item.reason, "message": item.detail}


# -- the methods -------------------------------------------------------------------------------


class ResourceStreams:
    """The broker's event streams as MCP resources, on top of :class:`EventStreams`."""

    def __init__(self, streams: EventStreams) -> None:
        self.streams = streams
        # Each MCP subscription -> its connection, listen stream (or None) and URI.
        self.by_sub: dict[int, tuple[Connection, Any, str]] = {}
        # Listen streams whose acknowledgement is not sent yet -> the URIs owed an update.
        self.unacked: dict[tuple[Connection, Any], set[str]] = {}

    def add_methods(self, m: Methods) -> None:
        m.register_sync("resources/templates/list", self.templates_list)
        m.register_sync("resources/list", self.resources_list)
        m.register_sync("resources/subscribe", self.subscribe)
        m.register_sync("resources/unsubscribe", self.unsubscribe)
        m.register_sync("resources/read", self.read)

    @staticmethod
    def _mine(conn: Connection) -> dict[Key, int]:
        mine: dict[Key, int] | None = conn.state.get("mcp_resources")
        if mine is None:
            mine = conn.state["mcp_resources"] = {}
        return mine

    def _modern(self, request: RequestContext) -> dict[str, Any] | None:
        return mcp.era(request.meta, self.streams.core.result_meta)

    @staticmethod
    def _result(result: dict[str, Any], modern: dict[str, Any] | None) -> dict[str, Any]:
        if modern is not None:
            # What a caller may subscribe to, and what it has read, are its own: private.
            result.update(resultType="complete", ttlMs=0, cacheScope="private", _meta=modern)
        return result

    # -- listing -----------------------------------------------------------------------------

    def _streams_for(self, request: RequestContext) -> list[tuple[str, str, list[str], bool]]:
        """(NSID, description, param names, any required) of each stream the caller may
        subscribe to, in NSID order."""
        core = self.streams.core
        who = self.streams.who(request)
        out = []
        for doc in sorted(core.catalog.registry.documents(), key=lambda d: d.id):
            main = doc.defs.get("main")
            if (
                not isinstance(main, SubscriptionType)
                or not core.subscriptions.may_subscribe(who.caller, doc.id)[0]
            ):
                continue
            params = main.parameters
            names = list(params.properties) if params is not None else []
            required = bool(params.required) if params is not None else False
            description = main.description or doc.description or doc.id
            out.append((doc.id, description, names, required))
        return out

    def templates_list(
        self, request: RequestContext, cursor: Any = None, **extensions: Any
    ) -> dict[str, Any]:
        modern = self._modern(request)
        templates = [
            {
                "uriTemplate": template(nsid, names),
                "name": nsid,
                "description": description,
                "mimeType": MIME,
            }
            for nsid, description, names, _ in self._streams_for(request)
        ]
        return self._result({"resourceTemplates": templates}, modern)

    def resources_list(
        self, request: RequestContext, cursor: Any = None, **extensions: Any
    ) -> dict[str, Any]:
        modern = self._modern(request)
        resources = [
            {"uri": template(nsid, []), "name": nsid, "description": description, "mimeType": MIME}
            for nsid, description, _, required in self._streams_for(request)
            if not required
        ]
        return self._result({"resources": resources}, modern)

    # -- subscribing -------------------------------------------------------------------------

    def _open(self, request: RequestContext, key: Key) -> None:
        """Subscribe ``key``'s URI for this connection, decided and audited as a
        ``kiki/subscribe`` (a bad URI and a claim to be someone included). Subscribed already
        for the same subscriber: nothing to do; for someone else: refused (see ``_again``)."""
        conn = request.connection
        mine = self._mine(conn)
        uri = key[1]
        asked = Asked(_audit_name(uri), {})

        def decide(subscriber: Subscriber) -> Opened | None:
            nsid, params = parse_uri(self.streams, uri)
            asked.tool, asked.arguments = nsid, params
            held = mine.get(key)
            if held is not None:
                self._again(subscriber, nsid, held, uri)
                return None
            cid = self.streams.cid(conn)
            return subscriber, *self.streams.subscriptions.subscribe(subscriber, cid, nsid, params)

        opened = self.streams.decided(request, asked, decide)
        if opened is None:
            return
        subscriber, subscribed, actions = opened
        mine[key] = subscribed.sub
        self.by_sub[subscribed.sub] = (conn, key[0], uri)
        self.streams.held(subscriber, subscribed.sub, asked.tool)
        self.streams.carry(actions)  # may say at once that it is readable: known by now

    def _again(self, subscriber: Subscriber, nsid: str, held: int, uri: str) -> None:
        """A URI subscribed on this connection already, asked again: for the same subscriber,
        nothing to do (hosts subscribe again while reconciling). MCP names a resource
        subscription by its URI alone (updates, reads, unsubscribes), so one URI has one
        subscriber per connection: anyone else is decided first (a refusal is theirs), then
        refused as a conflict, never let through on the first one's decision."""
        holder = self.streams.subs.get(held)
        if holder == subscriber:
            return
        allowed, reason = self.streams.subscriptions.may_subscribe(subscriber.caller, nsid)
        if not allowed:
            raise PermissionDenied(f"{subscriber.describe()} may not subscribe to {nsid}: {reason}")
        raise Conflict(
            f"{uri} is subscribed on this connection for someone else already: one subscriber "
            "per URI per connection (MCP names the subscription by its URI alone)",
            data={"uri": uri},
        )

    def _close(self, conn: Connection, key: Key) -> None:
        sub = self._mine(conn).pop(key, None)
        if sub is None:
            return
        self.by_sub.pop(sub, None)
        self.streams.end_subscription(conn, sub)

    def subscribe(self, request: RequestContext, uri: Any, **extensions: Any) -> dict[str, Any]:
        modern = self._modern(request)
        self._open(request, (None, uri))
        return self._result({}, modern)

    def unsubscribe(self, request: RequestContext, uri: Any, **extensions: Any) -> dict[str, Any]:
        modern = self._modern(request)
        if not isinstance(uri, str):
            raise InvalidParams("uri must be a string")
        self._close(request.connection, (None, uri))
        return self._result({}, modern)

    def read(self, request: RequestContext, uri: Any, **extensions: Any) -> dict[str, Any]:
        modern = self._modern(request)
        nsid, params = parse_uri(self.streams, uri)
        assert isinstance(uri, str)
        conn = request.connection
        mine = self._mine(conn)
        # The resources/subscribe subscription, else the newest listen stream's.
        keys = [k for k in mine if k[1] == uri]
        key = (None, uri) if (None, uri) in mine else (keys[-1] if keys else None)
        items: list[dict[str, Any]] = []
        if key is not None:
            sub = mine[key]
            taken = self.streams.fanout.drain(sub)
            items = [item_json(item) for item in taken]
            if taken and isinstance(taken[-1], Ended):  # the fan-out has forgotten it
                del mine[key]
                self.by_sub.pop(sub, None)
        body = {"uri": uri, "nsid": nsid, "params": params, "subscribed": key is not None}
        body["items"] = items
        text = orjson.dumps(body).decode()
        contents = [{"uri": uri, "mimeType": MIME, "text": text}]
        return self._result({"contents": contents}, modern)

    # -- 2026-07-28 listen streams -----------------------------------------------------------

    def listen(self, request: RequestContext, notifications: Any) -> list[str]:
        """Subscribe the ``resourceSubscriptions`` of a listen stream: the URIs honored. Their
        updates wait for :meth:`acknowledged`."""
        wanted = notifications.get("resourceSubscriptions") if notifications else None
        if not isinstance(wanted, list):
            return []
        stream = (request.connection, request.request_id)
        self.unacked[stream] = set()
        honored: list[str] = []
        for uri in dict.fromkeys(u for u in wanted if isinstance(u, str)):
            try:
                self._open(request, (request.request_id, uri))
            except KikiError:
                continue  # not honored; a refusal by the policy is audited
            honored.append(uri)
        return honored

    def acknowledged(self, conn: Connection, sid: Any) -> None:
        """The listen stream's acknowledgement is out: send the updates held until now."""
        for uri in sorted(self.unacked.pop((conn, sid), ())):
            self.streams.send_soon(conn, UPDATED, mcp.on_stream(sid, {"uri": uri}))

    def unlisten(self, conn: Connection, sid: Any) -> None:
        """The listen stream ended: its subscriptions end with it."""
        self.unacked.pop((conn, sid), None)
        for key in [k for k in self._mine(conn) if k[0] == sid]:
            self._close(conn, key)

    # -- from the fan-out --------------------------------------------------------------------

    def readable(self, sub: int) -> bool:
        """Tell the host that ``sub`` has something to read, if it is one of ours."""
        found = self.by_sub.get(sub)
        if found is None:
            return False
        conn, sid, uri = found
        if sid is None:
            self.streams.send_soon(conn, UPDATED, {"uri": uri})
        elif (held := self.unacked.get((conn, sid))) is not None:
            held.add(uri)
        else:
            self.streams.send_soon(conn, UPDATED, mcp.on_stream(sid, {"uri": uri}))
        return True

    def connection_lost(self, conn: Connection) -> None:
        for sub in conn.state.pop("mcp_resources", {}).values():
            self.by_sub.pop(sub, None)
        for stream in [s for s in self.unacked if s[0] is conn]:
            del self.unacked[stream]
