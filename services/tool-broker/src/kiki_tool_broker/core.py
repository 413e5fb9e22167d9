"""The broker's decisions, sans I/O: who may register and call what, and what each call's
answer and audit line are.

Plain data in, plain data out; no sockets, no asyncio, no connections (a provider's connection
rides along in :class:`~kiki_tool_broker.registry.Provider` for the server's use, untouched
here). :mod:`kiki_tool_broker.server` moves the bytes: it asks :meth:`BrokerCore.call` about a
``tools/call``, which refuses it at once (:class:`Answer`: a typed error) or admits it
(:class:`Admitted`: forward ``params`` to ``tool.provider``, or run one of the broker's own
tools); when the tool's side is over, :meth:`BrokerCore.settle` makes its :class:`Answer`.
A call with an idempotency key may instead be answered from :mod:`kiki_tool_broker.idempotency`
(a replay), or join the same call running (:class:`Joining`: the server holds it until
:meth:`BrokerCore.release` says what the first call's answer was). Every answer is also the
:class:`AuditRecord` to write, with the counter to bump, before it is given.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson

from kiki_tool_broker import protocol as mcp
from kiki_tool_broker.config import BrokerConfig
from kiki_tool_broker.idempotency import IdempotencyCache, Join, Replay
from kiki_tool_broker.policy import Caller, Decision, Policy, installed_authority, remote_of
from kiki_tool_broker.registry import (
    Provider,
    Tool,
    ToolRegistry,
    caller_view,
    forwarded_caller,
)
from kiki_tool_broker.results import (
    COUNTERS,
    checked_result,
    outcome_of,
    own_result,
    provider_result,
)
from kiki_tool_broker.schemas import Catalog, ToolSchema
from kiki_tool_broker.streams import Action, StreamFanout, Subscribed
from libkiki.audit import args_hash
from libkiki.errors import InvalidParams, KikiError, NotFound, PermissionDenied, Unavailable
from libkiki.peer import PeerCred
from libkiki.principals import Remote, identity_of, is_kiki_service
from libkiki.tools import IDEMPOTENCY_KEY_META, ON_BEHALF_OF_META

if TYPE_CHECKING:
    from libkiki.rpc.messages import RequestId

log = logging.getLogger(__name__)

OWN_NAME = "kiki-tool-broker"  # the broker as the provider of its own tools
# The broker's own streams that show what one of its tools shows: a caller the policy keeps
# from the tool is kept from the stream too (a rule written for the tool before the stream
# existed still holds).
SHOWS_WHAT_A_TOOL_SHOWS: Final = {"dev.kiki.tools.subscribeAudit": "dev.kiki.tools.readAuditLog"}


@dataclass(frozen=True, slots=True)
class Who:
    """A caller as the broker decides about it and names it. A peer's identity is fixed when it
    connects (libkiki.peer: SO_PEERCRED, its groups, its app id), so this is made once per
    connection (:meth:`BrokerCore.identify`)."""

    cred: PeerCred
    caller: Caller  # the policy's key
    view: dict[str, Any]  # ``#caller``, as the audit log names it
    # What a forwarded call tells its provider, to decide by the same principals as the broker.
    forwarded: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Subscriber:
    """Who holds a subscription, as policy decides for it (re-checked on a reload) and the
    audit names it: the connection's peer (``view``) and, for a trusted delegate's
    subscription, the remote person it relays for (``on_behalf_of``, then the one decided
    for)."""

    caller: Caller
    view: dict[str, Any]
    on_behalf_of: dict[str, Any] | None

    def describe(self) -> str:
        asker = self.caller.cred.describe()
        remote = self.caller.remote
        return asker if remote is None else f"{remote} (relayed by {asker})"


@dataclass(slots=True)
class AuditRecord:
    """One audit line, to be written before the answer it goes with (its duration: from
    ``started``, on the same clock, to when it is written)."""

    caller: dict[str, Any]
    tool: str
    outcome: str
    code: int | None
    arguments: Any
    provider: dict[str, Any] | None  # who answered (or was to): its identity
    started: float
    # The remote person a trusted delegate called for (``caller`` is then the delegate).
    on_behalf_of: dict[str, Any] | None = field(default=None, kw_only=True)

    @property
    def counter(self) -> str:
        """getInfo's counter that this call bumps."""
        return COUNTERS[self.outcome]


@dataclass(slots=True)
class Answer(AuditRecord):
    """A call's answer, ``result`` or ``error``, with its audit record: one object, as the
    server writes the one and then gives the other."""

    result: dict[str, Any] | None
    error: Exception | None


@dataclass(frozen=True, slots=True)
class Registered:
    """A registration's outcome: the tools and the streams it added, and what the streams'
    fan-out asks of the server for them (opening upstreams for subscribers waiting)."""

    tools: list[str]
    streams: list[str]
    actions: list[Action]


@dataclass(slots=True, eq=False)
class Admitted:
    """A call that passed every check and is for its tool to answer: ``params`` go to
    ``tool.provider`` as a ``tools/call``, or, when None, the broker's own tool runs."""

    tool: Tool
    schema: ToolSchema
    arguments: dict[str, Any]
    caller: dict[str, Any]  # the caller's audit view
    started: float
    modern: dict[str, Any] | None  # the 2026-07-28 result _meta, or None (mcp.era)
    room: int  # bytes an answer line has for the output, twice, once the caller's id is in it
    params: dict[str, Any] | None
    on_behalf_of: dict[str, Any] | None = None
    token: int | None = None  # its idempotency cache entry, when it carries a key


@dataclass(slots=True, eq=False)
class Joining:
    """A duplicate of a keyed call still running: it gets that call's answer (``token``)."""

    caller: dict[str, Any]
    tool: str
    arguments: dict[str, Any]
    provider: dict[str, Any]
    started: float
    on_behalf_of: dict[str, Any] | None
    token: int


class BrokerCore:
    def __init__(
        self,
        config: BrokerConfig,
        catalog: Catalog,
        policy: Policy,
        *,
        version: str = "0",
        apps_dir: Path | None = None,
        own: PeerCred | None = None,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.policy = policy  # replaced on a reload
        self.registry = ToolRegistry()
        # Installed app manifests (kiki app install): an app's id is its NSID authority.
        self.apps_dir = apps_dir
        if own is None:
            own = PeerCred(pid=os.getpid(), uid=os.getuid(), gid=os.getgid(), app_id=OWN_NAME)
        self.own_uid = own.uid
        self.own = Provider(OWN_NAME, own)  # the provider of the broker's own tools
        self.result_meta = mcp.result_meta(version)  # every 2026-07-28 result's _meta
        # Event streams: the fan-out, keyed by Provider.id on the provider side.
        self.streams = StreamFanout(
            validate=self._validate_message,
            max_subscriptions=config.stream_max_subscriptions,
            max_per_connection=config.stream_max_per_connection,
            max_queue_messages=config.stream_queue_messages,
            max_queue_bytes=config.stream_queue_bytes,
            # A message must fit in a kiki/event line with its envelope.
            max_message_bytes=max(
                256, min(config.stream_max_message_bytes, config.max_line - 4096)
            ),
        )
        self.stream_providers: dict[int, Provider] = {self.own.id: self.own}
        self.idempotency = IdempotencyCache(
            ttl=config.idempotency_window,
            max_entries=config.idempotency_max_entries,
            max_bytes=config.idempotency_max_bytes,
        )

    # -- who ----------------------------------------------------------------------------------

    @staticmethod
    def identify(cred: PeerCred) -> Who:
        return Who(cred, Caller.of(cred), caller_view(cred), forwarded_caller(cred))

    @staticmethod
    def provider(cred: PeerCred, connection: Any = None) -> Provider:
        """The provider a connection becomes when it first registers or unregisters."""
        return Provider(cred.app_id or f"pid {cred.pid}", cred, connection)

    def allows(self, caller: Caller, tool: Tool) -> Decision:
        return self.policy.allows(caller, tool.nsid, tool.kind, tool.provider.uids)

    # -- registration -------------------------------------------------------------------------

    def register(
        self, provider: Provider, tools: Any, lexicons: Any = None, max_in_flight: Any = None
    ) -> list[str]:
        """Register ``tools`` (NSIDs; a repeated one counts once) for ``provider``, with the
        lexicon documents it sends: all or nothing. ``max_in_flight`` is only checked here: the
        server holds the provider's connection to it."""
        return self.register_all(provider, tools, lexicons, max_in_flight).tools

    def register_all(
        self,
        provider: Provider,
        tools: Any,
        lexicons: Any = None,
        max_in_flight: Any = None,
        subscriptions: Any = None,
    ) -> Registered:
        """:meth:`register`, with the event streams (``subscriptions``: NSIDs of subscription
        lexicons) the provider serves too: tools and streams all together, or nothing. The
        same provide policy applies to both."""
        wanted = [] if tools is None else nsid_list(tools)
        streams = [] if subscriptions is None else nsid_list(subscriptions, "subscriptions")
        if max_in_flight is not None and (
            not isinstance(max_in_flight, int)
            or isinstance(max_in_flight, bool)
            or max_in_flight < 1
        ):
            raise InvalidParams("maxInFlight must be a positive integer")
        limit = self.config.max_tools_per_provider
        if len(provider.tools) + len(wanted) > limit:
            raise InvalidParams(
                f"a provider may register at most {limit} tools", data={"limit": limit}
            )
        # Streams count against the same bound, apart from the tools.
        if len(self.streams.served(provider.id)) + len(streams) > limit:
            raise InvalidParams(
                f"a provider may serve at most {limit} streams", data={"limit": limit}
            )
        try:
            reserve = self.may_provide(provider, [*wanted, *streams])
            kiki_service = is_kiki_service(provider.cred, self.own_uid)
            staged = self.catalog.stage(lexicons, owner=provider.id)
            entries = [tool_entry(staged.tool(nsid), provider) for nsid in wanted]
            for nsid in streams:
                staged.stream(nsid)  # a subscription lexicon, or InvalidParams
            self._check_reserved(provider, streams, kiki_service)
            self.streams.check_declare(provider.id, streams)
            registered = self.registry.register(
                provider,
                entries,
                reserve=reserve - set(streams),
                kiki_service=kiki_service,
            )
        except KikiError as exc:
            # The operator's record of a refused registration: who, what, why.
            log.warning(
                "refused to register %s for %s (%s): %s",
                ", ".join([*wanted, *streams]),
                provider.name,
                provider.identity,
                exc.message,
            )
            raise
        self.catalog.commit(staged, [*registered, *streams])
        actions = self.streams.declare(provider.id, streams)  # checked above: cannot refuse
        reserved = self.registry.reserved
        for nsid in streams:  # reserved for its identity as its tools are
            if nsid in reserve and len(reserved) < self.registry.max_reserved:
                reserved.setdefault(nsid, provider.identity)
        if streams:
            self.stream_providers[provider.id] = provider
        if registered or streams:
            log.info("provider %s registered %s", provider.name, ", ".join([*registered, *streams]))
        return Registered(registered, streams, actions)

    def _check_reserved(self, provider: Provider, streams: list[str], kiki_service: bool) -> None:
        """A stream NSID reserved for another identity (a Kiki service's or an installed
        app's, as tools are) is refused, except to Kiki's own services."""
        reserved = self.registry.reserved
        foreign = {
            n: who
            for n in streams
            if (who := reserved.get(n)) is not None
            and who != provider.identity
            and not kiki_service
        }
        if foreign:
            whose = ", ".join(f"{n} (reserved for {who})" for n, who in sorted(foreign.items()))
            raise PermissionDenied(
                f"{provider.identity} may not provide {whose}: a Kiki service's or installed "
                "app's streams stay reserved for it",
                data={"nsids": sorted(foreign), "reservedFor": foreign},
            )

    def declare_own_streams(self, nsids: Iterable[str]) -> list[str]:
        """The broker's own event streams (installed lexicons; the broker provides them)."""
        names = []
        for nsid in nsids:
            try:
                self.catalog.stream(nsid)
            except KikiError as exc:
                log.warning("own stream %s not served: %s", nsid, exc.message)
                continue
            names.append(nsid)
        self.streams.declare(self.own.id, names)
        return names

    def register_own(self, nsids: Iterable[str]) -> list[str]:
        """Register the broker's own tools (their lexicons are installed ones)."""
        own = self.own
        return self.registry.register(own, [tool_entry(self.catalog.tool(n), own) for n in nsids])

    def unregister(self, provider: Provider, tools: Any) -> list[str]:
        """Unregister ``tools`` (a repeated NSID counts once), all of which ``provider`` must
        have registered; else nothing changes."""
        return self.unregister_all(provider, tools).tools

    def unregister_all(
        self, provider: Provider, tools: Any, subscriptions: Any = None
    ) -> Registered:
        """:meth:`unregister`, with streams: all of them the provider's own, or nothing."""
        wanted = [] if tools is None else nsid_list(tools)
        streams = [] if subscriptions is None else nsid_list(subscriptions, "subscriptions")
        foreign = [n for n in streams if self.streams.served_by(n) != provider.id]
        if foreign:
            raise NotFound(
                "not served by this provider: " + ", ".join(foreign), data={"nsids": foreign}
            )
        removed = self.registry.unregister(provider, wanted)
        actions = self.streams.withdraw(provider.id, streams)  # checked above
        self.catalog.release_tools(provider.id, [*removed, *streams])
        if removed or streams:
            log.info("provider %s unregistered %s", provider.name, ", ".join([*removed, *streams]))
        return Registered(removed, streams, actions)

    def drop_provider(self, provider: Provider) -> list[str]:
        """A provider's connection closed: its tools, and the documents only it held, go."""
        gone = self.registry.remove_provider(provider)
        self.catalog.drop_owner(provider.id)
        self.stream_providers.pop(provider.id, None)
        if gone:
            log.info("provider %s left; removed %s", provider.name, ", ".join(gone))
        return gone

    def may_provide(self, provider: Provider, wanted: list[str]) -> set[str]:
        """Whether the provider may provide every NSID of ``wanted`` (else PermissionDenied
        naming each refused one and why); those that stay reserved for it (each by its own
        verdict: one granted by a ``[[provide]]`` rule alone is not)."""
        cred = provider.cred
        authority = installed_authority(self.apps_dir, cred.app_id)
        refused: dict[str, str] = {}
        reserve: set[str] = set()
        for nsid in wanted:
            verdict = self.policy.may_provide(cred, nsid, own_uid=self.own_uid, authority=authority)
            if not verdict.allowed:
                refused[nsid] = verdict.reason
            elif verdict.reserve:
                reserve.add(nsid)
        if refused:
            why = "; ".join(f"{n}: {r}" for n, r in refused.items())
            raise PermissionDenied(
                f"{provider.identity} may not provide {why}",
                data={"nsids": list(refused), "reasons": refused},
            )
        return reserve

    # -- event streams ------------------------------------------------------------------------

    def _validate_message(self, nsid: str, message: Any) -> None:
        self.catalog.stream(nsid).validate_message(message)

    def subscriber(self, who: Who, meta: dict[str, Any] | None = None) -> Subscriber:
        """Who a ``kiki/subscribe`` is decided and audited for: the caller, or the remote
        person a trusted delegate names in ``meta`` (as for a call: refused from anyone else,
        ``-32003``; malformed, ``-32602``)."""
        remote = self._remote(who, meta)
        if remote is None:
            return Subscriber(who.caller, who.view, None)
        return Subscriber(Caller(who.cred, remote), who.view, remote.view())

    def subscribe(
        self, subscriber: Subscriber, conn: int, nsid: object, params: object
    ) -> tuple[Subscribed, list[Action]]:
        """A ``kiki/subscribe``: the NSID must name a subscription lexicon, the subscriber be
        allowed (access kind ``subscribe``) and ``params`` fit the lexicon's parameters."""
        if not isinstance(nsid, str):
            raise InvalidParams("nsid must be a string")
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise InvalidParams("params must be an object")
        schema = self.catalog.stream(nsid)
        allowed, reason = self.may_subscribe(subscriber.caller, nsid)
        if not allowed:
            raise PermissionDenied(f"{subscriber.describe()} may not subscribe to {nsid}: {reason}")
        schema.validate_params(params)
        return self.streams.subscribe(conn, nsid, params, caller=subscriber)

    def may_subscribe(self, caller: Caller, nsid: str) -> Decision:
        served = self.streams.served_by(nsid)
        provider = None if served is None else self.stream_providers.get(served)
        uids = provider.uids if provider is not None else frozenset()
        decision = self.policy.allows(caller, nsid, "subscription", uids)
        shown_by = SHOWS_WHAT_A_TOOL_SHOWS.get(nsid)
        if decision[0] and shown_by is not None and provider is self.own:
            allowed, reason = self.policy.allows(caller, shown_by, "query", self.own.uids)
            if not allowed:
                return False, f"{reason} ({nsid} shows what {shown_by} does)"
        return decision

    # -- listing ------------------------------------------------------------------------------

    def list_tools(
        self, who: Who, cursor: str | None, modern: dict[str, Any] | None
    ) -> dict[str, Any]:
        """A ``tools/list`` page: the tools this caller may call (MCP: the tools available to
        the requesting client); what its policy denies it is left out, and a call of it is
        still refused."""
        tools = [t for t in self.registry if self.allows(who.caller, t)[0]]
        if cursor is not None:
            after = mcp.decode_cursor(cursor)
            if after is None:
                raise InvalidParams("invalid cursor", data={"cursor": cursor})
            tools = [t for t in tools if t.nsid > after]
        page = tools[: self.config.list_page_size]
        more = len(tools) > len(page)
        next_cursor = mcp.encode_cursor(page[-1].nsid) if more else None
        return mcp.list_result([t.mcp() for t in page], modern, next_cursor)

    def list_streams(self, who: Who, cursor: object = None) -> dict[str, Any]:
        """A ``kiki/listStreams`` page: the event streams served now that this caller may
        subscribe to, in NSID order, each with its description and its provider (as
        ``tools/list`` shows a tool's); ``nextCursor`` while more pages remain."""
        served = self.streams.serving()
        if cursor is not None:
            after = mcp.decode_cursor(cursor)
            if after is None:
                raise InvalidParams("invalid cursor", data={"cursor": cursor})
            served = [(n, p) for n, p in served if n > after]
        page: list[dict[str, Any]] = []
        size = self.config.list_page_size
        for nsid, pid in served:
            if not self.may_subscribe(who.caller, nsid)[0]:
                continue
            if len(page) == size:
                last = page[-1]["nsid"]
                return {"streams": page, "nextCursor": mcp.encode_cursor(last)}
            entry: dict[str, Any] = {
                "nsid": nsid,
                "description": self.catalog.stream(nsid).description,
            }
            provider = self.stream_providers.get(pid)
            if provider is not None:
                entry["provider"] = provider.view
            page.append(entry)
        return {"streams": page}

    # -- calls --------------------------------------------------------------------------------

    def call(
        self,
        who: Who,
        name: object,
        arguments: object,
        request_id: RequestId,
        modern: dict[str, Any] | None,
        started: float,
        meta: dict[str, Any] | None = None,
    ) -> Answer | Admitted | Joining:
        """A ``tools/call`` of ``name`` by ``who`` (``meta``: the request's ``_meta``): refused
        (an :class:`Answer` with its error), answered from the idempotency cache (an
        :class:`Answer`, outcome ``replay``), joined to the same keyed call running, or
        admitted for its tool to answer."""
        arguments = {} if arguments is None else arguments
        answering: dict[str, Any] | None = None  # the provider's view, once the tool is known
        behalf: dict[str, Any] | None = None
        try:
            remote = self._remote(who, meta)
            behalf = None if remote is None else remote.view()
            if not isinstance(name, str):
                raise InvalidParams("name must be a string")
            try:
                tool = self.registry.get(name)
            except NotFound:
                raise InvalidParams(f"unknown tool: {name}", data={"name": name}) from None
            answering = tool.provider.view
            if not isinstance(arguments, dict):
                raise InvalidParams("arguments must be an object")
            caller = who.caller if remote is None else Caller(who.cred, remote)
            allowed, reason = self.policy.allows(caller, name, tool.kind, tool.provider.uids)
            if not allowed:
                asker = who.cred.describe()
                if remote is not None:
                    asker = f"{remote} (relayed by {asker})"
                raise PermissionDenied(f"{asker} may not call {name}: {reason}")
            schema = self.catalog.tool(name)
            schema.validate_input(arguments)
            token = None
            key = None if meta is None else meta.get(IDEMPOTENCY_KEY_META)
            if key is not None:
                principal = identity_of(who.cred) if remote is None else f"{remote} via "
                if remote is not None:
                    principal += identity_of(who.cred)
                hashed = args_hash(arguments)
                begun = self.idempotency.begin(principal, key, name, hashed, started)
                if isinstance(begun, Replay):
                    result, error, code = begun.result
                    if error is not None:
                        error = error.with_traceback(None)
                    return Answer(
                        who.view,
                        name,
                        "replay",
                        code,
                        arguments,
                        answering,
                        started,
                        result,
                        error,
                        on_behalf_of=behalf,
                    )
                if isinstance(begun, Join):
                    return Joining(
                        who.view, name, arguments, answering, started, behalf, begun.token
                    )
                token = begun.token
        except Exception as exc:
            outcome, code = outcome_of(exc)
            return Answer(
                who.view,
                str(name),
                outcome,
                code,
                arguments,
                answering,
                started,
                None,
                exc,
                on_behalf_of=behalf,
            )
        room = self.config.max_line - (
            len(orjson.dumps(request_id)) if isinstance(request_id, str) else 24
        )
        params = None
        if tool.provider is not self.own:
            forwarded: dict[str, Any] = {mcp.CALLER_META: who.forwarded}
            if behalf is not None:
                forwarded[ON_BEHALF_OF_META] = behalf
            params = {"name": name, "arguments": arguments, "_meta": forwarded}
        return Admitted(
            tool, schema, arguments, who.view, started, modern, room, params, behalf, token
        )

    def _remote(self, who: Who, meta: dict[str, Any] | None) -> Remote | None:
        """The remote person a call is made for (``_meta["dev.kiki/onBehalfOf"]``), which only
        a trusted delegate may name: from anyone else it is refused, as a claim to be someone
        the kernel did not say it is."""
        value = None if meta is None else meta.get(ON_BEHALF_OF_META)
        if value is None:
            return None
        if not self.policy.is_delegate(who.cred):
            raise PermissionDenied(
                f"{who.cred.describe()} is not a trusted delegate: it may not call on behalf "
                "of someone else",
                data={"rule": "onBehalfOf"},
            )
        return remote_of(value)

    def release(self, call: Admitted, answer: Answer | None, now: float) -> Answer | None:
        """A keyed call's end (``answer`` None: it was cancelled, or its audit line could not
        be written): kept for its retries when its tool ran, else forgotten so that a retry
        runs. Returns the answer the calls that joined it get (None: nobody joined)."""
        if call.token is None:
            return None
        if answer is not None and answer.outcome in _KEPT:
            size = len(orjson.dumps(answer.result)) if answer.result is not None else 256
            kept = (answer.result, answer.error, answer.code)
            joined = self.idempotency.finish(call.token, kept, size, now)
            return answer if joined else None
        if not self.idempotency.abandon(call.token):
            return None
        gone = Unavailable(
            "the call this one repeats (same idempotency key) ended before it ran; retry it",
            data={"rule": "idempotencyKey"},
        )
        return Answer(
            call.caller,
            call.tool.nsid,
            "cancelled",
            gone.jsonrpc_code,
            call.arguments,
            call.tool.provider.view,
            call.started,
            None,
            gone,
            on_behalf_of=call.on_behalf_of,
        )

    @staticmethod
    def joined(joining: Joining, first: Answer) -> Answer:
        """The answer of a call that joined a running one: that call's, audited as a replay
        (or as the error it ended with, when it ended before it ran)."""
        replayed = first.outcome in _KEPT
        error = first.error.with_traceback(None) if first.error is not None else None
        return Answer(
            joining.caller,
            joining.tool,
            "replay" if replayed else first.outcome,
            first.code,
            joining.arguments,
            joining.provider,
            joining.started,
            first.result,
            error,
            on_behalf_of=joining.on_behalf_of,
        )

    def settle(self, call: Admitted, output: Any, error: BaseException | None) -> Answer:
        """The answer to an admitted call whose tool side ended with ``output`` (a provider's
        reply, or what the broker's own tool returned) or ``error``."""
        tool = call.tool
        failed: Exception | None = None
        try:
            if call.params is None:
                if error is None:  # the common case, without a call more
                    result, outcome, code = checked_result(
                        call.schema, output, call.modern, call.room
                    )
                else:
                    result, outcome, code = own_result(
                        call.schema, call.modern, call.room, output, error
                    )
            else:
                timeout = self.config.call_timeout
                result, outcome, code = provider_result(
                    tool, call.schema, call.modern, call.room, timeout, output, error
                )
        except Exception as exc:
            failed, result = exc, None
            outcome, code = outcome_of(exc)
        return Answer(
            call.caller,
            tool.nsid,
            outcome,
            code,
            call.arguments,
            tool.provider.view,
            call.started,
            result,
            failed,
            on_behalf_of=call.on_behalf_of,
        )

    @staticmethod
    def cancelled(call: Admitted) -> AuditRecord:
        """The audit line of an admitted call its caller cancelled, or left: nobody to answer."""
        tool = call.tool
        return AuditRecord(
            call.caller,
            tool.nsid,
            "cancelled",
            None,
            call.arguments,
            tool.provider.view,
            call.started,
            on_behalf_of=call.on_behalf_of,
        )


# The outcomes of a call whose tool ran (or may have: a timeout, the provider gone mid-call),
# whose answer a retry with its idempotency key gets instead of running it again.
_KEPT = frozenset({"ok", "error", "timeout", "provider-gone"})


def nsid_list(tools: Any, what: str = "tools") -> list[str]:
    """``tools`` (or ``subscriptions``) of kiki/registerTools and kiki/unregisterTools: a list
    of NSID strings, in order, each once."""
    if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
        raise InvalidParams(f"{what} must be a list of NSIDs")
    return list(dict.fromkeys(tools))


def tool_entry(schema: ToolSchema, provider: Provider) -> Tool:
    return Tool(
        schema.nsid,
        schema.kind,
        schema.description,
        schema.input_schema,
        schema.output_schema,
        schema.destructive,
        provider,
    )
