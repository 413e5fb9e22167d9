"""The broker's state and its registration decisions, sans I/O: who may register which tools
and event streams (all or nothing, the provide policy, reservations), who a peer is, who is a
trusted delegate's remote person, and what ``tools/list`` shows a caller.

Plain data in, plain data out; no sockets, no asyncio, no connections (a provider's connection
rides along in :class:`~kiki_tool_broker.registry.Provider` for the server's use, untouched
here). Its parts, over the same state: :attr:`BrokerCore.calls` (each ``tools/call``:
:mod:`kiki_tool_broker.calls`) and :attr:`BrokerCore.subscriptions` (who may subscribe to
what: :mod:`kiki_tool_broker.subscribing`). :mod:`kiki_tool_broker.server` moves the bytes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiki_tool_broker import protocol as mcp
from kiki_tool_broker.calls import Calls
from kiki_tool_broker.config import BrokerConfig
from kiki_tool_broker.policy import Caller, Decision, Policy, installed_authority
from kiki_tool_broker.registry import (
    Provider,
    Tool,
    ToolRegistry,
    caller_view,
    forwarded_caller,
)
from kiki_tool_broker.schemas import Catalog, ToolSchema
from kiki_tool_broker.streams import Action, StreamFanout
from kiki_tool_broker.subscribing import Subscriptions
from libkiki.errors import InvalidParams, KikiError, NotFound, PermissionDenied
from libkiki.peer import PeerCred
from libkiki.principals import Remote, is_kiki_service, remote_of
from libkiki.tools import ON_BEHALF_OF_META

log = logging.getLogger(__name__)

OWN_NAME = "kiki-tool-broker"  # the broker as the provider of its own tools


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

    def acting_for(self, remote: Remote | None) -> Caller:
        """The policy's key for what this peer asks: itself, or the remote person it relays for
        (:meth:`BrokerCore.remote`, which only a trusted delegate may name)."""
        return self.caller if remote is None else Caller(self.cred, remote)


@dataclass(frozen=True, slots=True)
class Registered:
    """A registration's outcome: the tools and the streams it added, and what the streams'
    fan-out asks of the server for them (opening upstreams for subscribers waiting)."""

    tools: list[str]
    streams: list[str]
    actions: list[Action]


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
        # Streams a provider declared private (privateSubscriptions): once declared, private
        # for the broker's lifetime, whoever serves them next or while nobody does (a topic
        # waiting for its provider must not be open to more than when it was served).
        self.private_streams: dict[str, None] = {}
        self.calls = Calls(self)
        self.subscriptions = Subscriptions(self)

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
        private: Any = None,
    ) -> Registered:
        """:meth:`register`, with the event streams (``subscriptions``: NSIDs of subscription
        lexicons) the provider serves too: tools and streams all together, or nothing. The
        same provide policy applies to both. ``private`` (``privateSubscriptions``): those of
        ``subscriptions`` that carry someone's own data, which the policy's defaults then
        open to root and the provider's own user only (:meth:`Policy.allows`)."""
        wanted = [] if tools is None else nsid_list(tools)
        streams = [] if subscriptions is None else nsid_list(subscriptions, "subscriptions")
        hidden = [] if private is None else nsid_list(private, "privateSubscriptions")
        if not set(hidden) <= set(streams):
            raise InvalidParams(
                "privateSubscriptions must name streams this registration declares in "
                "subscriptions",
                data={"nsids": [n for n in hidden if n not in streams]},
            )
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
        self._keep_private(hidden)  # before any subscriber is decided for them
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

    def _keep_private(self, nsids: list[str]) -> None:
        """Remember ``nsids`` as private streams. Bounded as reservations are: past the bound,
        the oldest not served now are forgotten (one served now stays private)."""
        for nsid in nsids:
            self.private_streams[nsid] = None
        excess = len(self.private_streams) - self.registry.max_reserved
        if excess > 0:
            idle = [n for n in self.private_streams if self.streams.served_by(n) is None]
            for nsid in idle[:excess]:
                del self.private_streams[nsid]

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

    def _validate_message(self, nsid: str, message: Any) -> None:
        self.catalog.stream(nsid).validate_message(message)

    # -- listing ------------------------------------------------------------------------------

    def list_tools(
        self,
        who: Who,
        cursor: str | None,
        modern: dict[str, Any] | None,
        remote: Remote | None = None,
    ) -> dict[str, Any]:
        """A ``tools/list`` page: the tools this caller may call (MCP: the tools available to
        the requesting client), or, for a trusted delegate naming a remote person
        (:meth:`remote`), the tools that person may call, decided as their calls are; what the
        policy denies is left out, and a call of it is still refused."""
        caller = who.acting_for(remote)
        tools = [t for t in self.registry if self.allows(caller, t)[0]]
        if cursor is not None:
            after = mcp.decode_cursor(cursor)
            if after is None:
                raise InvalidParams("invalid cursor", data={"cursor": cursor})
            tools = [t for t in tools if t.nsid > after]
        page = tools[: self.config.list_page_size]
        more = len(tools) > len(page)
        next_cursor = mcp.encode_cursor(page[-1].nsid) if more else None
        return mcp.list_result([t.mcp() for t in page], modern, next_cursor)

    # -- delegates ----------------------------------------------------------------------------

    def remote(self, who: Who, meta: dict[str, Any] | None) -> Remote | None:
        """The remote person a call is made for (``_meta["dev.kiki/onBehalfOf"]``), which only
        a trusted delegate may name: from anyone else it is refused, as a claim to be someone
        the kernel did not say it is."""
        value = None if meta is None else meta.get(ON_BEHALF_OF_META)
        if value is None:
            return None
        if not self.policy.is_delegate(who.cred):
            raise PermissionDenied(
                f"{who.cred.describe()} is not a trusted delegate: it may not act on behalf "
                "of someone else",
                data={"rule": "onBehalfOf"},
            )
        return remote_of(value)


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
