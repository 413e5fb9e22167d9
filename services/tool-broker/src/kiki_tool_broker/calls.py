"""Each ``tools/call``'s decisions, sans I/O: refused at once (:class:`Answer`: a typed error
and its audit line) or admitted (:class:`Admitted`: forward ``params`` to ``tool.provider``, or
run one of the broker's own tools); answered from its idempotency key (a replay) or joined to the
same keyed call running (:class:`Joining`, until :meth:`Calls.release` says what the first
call's answer was); then settled from the tool's reply (:meth:`Calls.settle`). Every answer is
also the :class:`AuditRecord` to write, with the counter to bump, before it is given.

Plain data in, plain data out; no sockets, no asyncio. What a call may reach (the tool table,
the catalog, the policy in force, who is a delegate) is :class:`~kiki_tool_broker.core.
BrokerCore`'s; :mod:`kiki_tool_broker.server` and :mod:`kiki_tool_broker.forwarding` move the
bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from kiki_tool_broker import protocol as mcp
from kiki_tool_broker.idempotency import IdempotencyCache, Join, Replay
from kiki_tool_broker.registry import Tool
from kiki_tool_broker.results import (
    COUNTERS,
    checked_result,
    outcome_of,
    own_result,
    provider_result,
)
from kiki_tool_broker.schemas import ToolSchema
from libkiki.audit import args_hash
from libkiki.errors import InvalidParams, NotFound, PermissionDenied, Unavailable
from libkiki.principals import identity_of
from libkiki.tools import IDEMPOTENCY_KEY_META, ON_BEHALF_OF_META

if TYPE_CHECKING:
    from kiki_tool_broker.core import BrokerCore, Who
    from libkiki.rpc.messages import RequestId


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


class Calls:
    """The calls' decisions (see the module's docstring), over the core's tool table."""

    def __init__(self, core: BrokerCore) -> None:
        self.core = core  # its policy is replaced on a reload: read through it
        self.registry = core.registry
        self.catalog = core.catalog
        self.config = core.config
        self.own = core.own
        config = core.config
        self.idempotency = IdempotencyCache(
            ttl=config.idempotency_window,
            max_entries=config.idempotency_max_entries,
            max_bytes=config.idempotency_max_bytes,
        )

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
            remote = self.core.remote(who, meta)
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
            caller = who.acting_for(remote)
            allowed, reason = self.core.policy.allows(caller, name, tool.kind, tool.provider.uids)
            if not allowed:
                raise PermissionDenied(f"{caller.describe()} may not call {name}: {reason}")
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
