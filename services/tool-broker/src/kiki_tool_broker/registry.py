"""The broker's tool table: which NSID is served by whom. Pure state, no I/O.

A provider is one connection that registered tools. Registration is all or nothing: if any NSID
in a request is reserved for another identity (:class:`~libkiki.errors.PermissionDenied`) or
already taken (by anyone, the same provider included: :class:`~libkiki.errors.Conflict`),
nothing is registered. An NSID registered with ``reserve`` (a Kiki service's, an installed
app's) stays reserved for the provider's identity (:func:`libkiki.principals.identity_of`) after
it leaves, for as long as this registry lives: nobody else can take it while its service
restarts. So is unregistering: if any NSID named
is not the provider's own, nothing is removed (:class:`~libkiki.errors.NotFound`). A provider's
disconnect removes all its tools at once.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from libkiki.errors import Conflict, NotFound, PermissionDenied
from libkiki.peer import PeerCred
from libkiki.principals import identity_of

log = logging.getLogger(__name__)

Kind = Literal["query", "procedure"]
PROVIDER_META = "dev.kiki/provider"  # who answers a tool, in its tools/list entry

_provider_ids = itertools.count(1)


@dataclass(eq=False)
class Provider:
    """A party serving tools: a connected process, or the broker itself (``connection=None``)."""

    name: str
    cred: PeerCred
    connection: Any = None  # libkiki.rpc.Connection; Any keeps this module free of asyncio
    id: int = field(default_factory=lambda: next(_provider_ids))
    tools: set[str] = field(default_factory=set)
    connected_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    identity: str = ""  # what the kernel vouches for, stable across restarts (set from cred)
    view: dict[str, Any] = field(default_factory=dict)  # as tools/list and the audit show it
    # Its uid as the policy's decisions are keyed by (made once: looked up on every call).
    uids: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        self.identity = identity_of(self.cred)
        self.view = provider_view(self.cred, self.identity)
        self.uids = frozenset((self.cred.uid,))


@dataclass(frozen=True, slots=True)
class Tool:
    nsid: str
    kind: Kind
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    destructive: bool
    provider: Provider

    def mcp(self) -> dict[str, Any]:
        """The tool as MCP's ``tools/list`` shows it, with who provides it in ``_meta``."""
        entry: dict[str, Any] = {
            "name": self.nsid,
            "description": self.description,
            "inputSchema": self.input_schema,
            "annotations": {
                "readOnlyHint": self.kind == "query",
                "destructiveHint": self.destructive,
            },
            "_meta": {PROVIDER_META: self.provider.view},
        }
        if self.output_schema is not None:
            entry["outputSchema"] = self.output_schema
        return entry


# Reservations outlive their providers, so they are bounded apart from them: past this many,
# a newly provided NSID is not reserved (it is still provided), and the broker says so.
MAX_RESERVED = 4096


class ToolRegistry:
    def __init__(self, max_reserved: int = MAX_RESERVED) -> None:
        self._tools: dict[str, Tool] = {}
        self._providers: dict[int, Provider] = {}
        # NSID -> the identity it stays reserved for, past its provider's disconnect.
        self.reserved: dict[str, str] = {}
        self.max_reserved = max_reserved
        self.generation = 0  # bumped on every change; list_changed goes out when it moves

    def register(
        self,
        provider: Provider,
        tools: Iterable[Tool],
        *,
        reserve: Collection[str] = (),
        kiki_service: bool = False,
    ) -> list[str]:
        """Register ``tools`` for ``provider``, all or none; those named in ``reserve`` stay
        reserved for its identity. A reservation holds against everyone but Kiki's own
        services (``kiki_service``: root, say, running a service's tools by hand)."""
        new = list(tools)
        names = [t.nsid for t in new]
        foreign = {
            n: who
            for n in names
            if (who := self.reserved.get(n)) is not None
            and who != provider.identity
            and not kiki_service
        }
        if foreign:
            whose = ", ".join(f"{n} (reserved for {who})" for n, who in sorted(foreign.items()))
            raise PermissionDenied(
                f"{provider.identity} may not provide {whose}: a Kiki service's or installed "
                "app's tools stay reserved for it",
                data={"nsids": sorted(foreign), "reservedFor": foreign},
            )
        taken = sorted({n for n in names if n in self._tools} | _duplicates(names))
        if taken:
            owners = {self._tools[n].provider.name for n in taken if n in self._tools}
            by = f" (registered by {', '.join(sorted(owners))})" if owners else ""
            raise Conflict(f"already registered: {', '.join(taken)}{by}", data={"nsids": taken})
        for tool in new:
            self._tools[tool.nsid] = tool
            provider.tools.add(tool.nsid)
            if tool.nsid in reserve and tool.nsid not in self.reserved:
                if len(self.reserved) < self.max_reserved:
                    self.reserved[tool.nsid] = provider.identity
                else:
                    log.warning(
                        "%s is not reserved for %s: %d NSIDs are reserved already",
                        tool.nsid,
                        provider.identity,
                        self.max_reserved,
                    )
        self._providers[provider.id] = provider
        if new:
            self.generation += 1
        return names

    def unregister(self, provider: Provider, nsids: Iterable[str]) -> list[str]:
        """Remove ``nsids`` (each once, however often named), all registered by ``provider``;
        if any is not, nothing is removed and :class:`~libkiki.errors.NotFound` says whose it
        is."""
        wanted = list(dict.fromkeys(nsids))
        foreign = [n for n in wanted if n not in provider.tools]
        if foreign:
            whose = [
                f"{n} (registered by {self._tools[n].provider.name})"
                if n in self._tools
                else f"{n} (not registered)"
                for n in foreign
            ]
            raise NotFound(
                f"not registered by this provider: {', '.join(whose)}", data={"nsids": foreign}
            )
        for nsid in wanted:
            del self._tools[nsid]
            provider.tools.discard(nsid)
        if wanted:
            self.generation += 1
        return wanted

    def remove_provider(self, provider: Provider) -> list[str]:
        gone = sorted(provider.tools)
        for nsid in gone:
            self._tools.pop(nsid, None)
        provider.tools.clear()
        self._providers.pop(provider.id, None)
        if gone:
            self.generation += 1
        return gone

    def get(self, nsid: str) -> Tool:
        try:
            return self._tools[nsid]
        except KeyError:
            raise NotFound(f"no tool named {nsid}", data={"name": nsid}) from None

    def __iter__(self) -> Iterator[Tool]:
        return iter(sorted(self._tools.values(), key=lambda t: t.nsid))

    def __len__(self) -> int:
        return len(self._tools)

    def providers(self) -> list[Provider]:
        return sorted(self._providers.values(), key=lambda p: p.id)

    def describe(self, provider: Provider) -> dict[str, Any]:
        """A provider as ``dev.kiki.tools.defs#providerView``."""
        view: dict[str, Any] = {
            "id": str(provider.id),
            "caller": caller_view(provider.cred),
            "tools": [
                {"nsid": t.nsid, "kind": t.kind, "description": t.description}
                for t in (self._tools[n] for n in sorted(provider.tools))
            ],
            "connectedAt": provider.connected_at,
            "identity": provider.identity,
        }
        if provider.cred.app_id:
            view["appId"] = provider.cred.app_id
        return view


def caller_view(cred: PeerCred) -> dict[str, Any]:
    """A peer as ``dev.kiki.tools.defs#caller``."""
    view: dict[str, Any] = {"uid": cred.uid, "gid": cred.gid, "pid": cred.pid}
    if cred.app_id:
        view["appId"] = cred.app_id
    return view


def forwarded_caller(cred: PeerCred) -> dict[str, Any]:
    """The caller as a forwarded call tells its provider: the ``#caller`` view plus its
    supplementary groups and, for an app id from a user's own manager, that user
    (``appUser``), so that the provider can match principals as the broker does."""
    view = caller_view(cred)
    view["groups"] = sorted(cred.groups)
    if cred.app_user is not None:
        view["appUser"] = cred.app_user
    return view


def provider_view(cred: PeerCred, identity: str) -> dict[str, Any]:
    """Who provides a tool, as its ``tools/list`` entry and the audit log name it."""
    view = caller_view(cred)
    view["identity"] = identity
    if cred.unit:
        view["unit"] = cred.unit
    return view


def _duplicates(names: list[str]) -> set[str]:
    return {n for n, count in Counter(names).items() if count > 1}
