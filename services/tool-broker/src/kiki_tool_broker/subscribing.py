"""Who may subscribe to which event stream, sans I/O: a ``kiki/subscribe`` decided for its
:class:`Subscriber` (the caller, or the remote person a trusted delegate names), checked against
the subscription lexicon and handed to the fan-out (:class:`~kiki_tool_broker.streams.
StreamFanout`), and the listing of the streams served now (``kiki/listStreams``). The same
decision is asked again when the policy is reloaded and when a waiting topic reopens on another
provider (:mod:`kiki_tool_broker.events` carries those out).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from kiki_tool_broker import protocol as mcp
from kiki_tool_broker.policy import Caller, Decision
from kiki_tool_broker.streams import Action, Subscribed
from libkiki.errors import InvalidParams, PermissionDenied

if TYPE_CHECKING:
    from kiki_tool_broker.core import BrokerCore, Who

# The broker's own streams that show what one of its tools shows: a caller the policy keeps
# from the tool is kept from the stream too (a rule written for the tool before the stream
# existed still holds).
SHOWS_WHAT_A_TOOL_SHOWS: Final = {"dev.kiki.tools.subscribeAudit": "dev.kiki.tools.readAuditLog"}


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
        return self.caller.describe()


@dataclass(slots=True)
class Asked:
    """What a subscribe asked for, as its refusal's audit line names it (``tool``, and the
    ``arguments`` it hashes): known better as the request is understood."""

    tool: str
    arguments: dict[str, Any]


class Subscriptions:
    """The subscribing decisions (see the module's docstring), over the core's state."""

    def __init__(self, core: BrokerCore) -> None:
        self.core = core  # its policy is replaced on a reload: read through it
        self.catalog = core.catalog
        self.config = core.config
        self.streams = core.streams
        self.stream_providers = core.stream_providers
        self.own = core.own

    def subscriber(self, who: Who, meta: dict[str, Any] | None = None) -> Subscriber:
        """Who a ``kiki/subscribe`` is decided and audited for: the caller, or the remote
        person a trusted delegate names in ``meta`` (as for a call: refused from anyone else,
        ``-32003``; malformed, ``-32602``)."""
        remote = self.core.remote(who, meta)
        return Subscriber(
            who.acting_for(remote), who.view, None if remote is None else remote.view()
        )

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

    def still_allowed(self, subscriber: Subscriber, nsid: str) -> Decision:
        """Whether a subscription held may go on (asked on a policy reload and when its topic
        reopens on another provider): what :meth:`subscribe` decided, asked again, the
        delegate's trust included (a relay the policy no longer trusts speaks for nobody)."""
        caller = subscriber.caller
        if caller.remote is not None and not self.core.policy.is_delegate(caller.cred):
            return False, f"{caller.cred.describe()} is no longer a trusted delegate"
        return self.may_subscribe(caller, nsid)

    def may_subscribe(self, caller: Caller, nsid: str) -> Decision:
        served = self.streams.served_by(nsid)
        provider = None if served is None else self.stream_providers.get(served)
        uids = provider.uids if provider is not None else frozenset()
        private = nsid in self.core.private_streams
        decision = self.core.policy.allows(caller, nsid, "subscription", uids, private=private)
        shown_by = SHOWS_WHAT_A_TOOL_SHOWS.get(nsid)
        if decision[0] and shown_by is not None and provider is self.own:
            allowed, reason = self.core.policy.allows(caller, shown_by, "query", self.own.uids)
            if not allowed:
                return False, f"{reason} ({nsid} shows what {shown_by} does)"
        return decision

    # -- listing ------------------------------------------------------------------------------

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
