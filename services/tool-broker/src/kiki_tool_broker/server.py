"""asyncio layer of the tool broker: MCP for callers, registration and forwarding for providers.

One socket, one method table. Any connection may call tools (``tools/list``, ``tools/call``) and
any connection may provide them (``kiki/registerTools``); the broker forwards each call to its
provider as a ``tools/call`` request on the provider's own connection, with the caller's
kernel-given identity in ``_meta["dev.kiki/caller"]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pydantic

from kiki_tool_broker import protocol as mcp
from kiki_tool_broker.audit import AuditLog
from kiki_tool_broker.builtin import BuiltinTools
from kiki_tool_broker.policy import Caller, Policy, installed_apps_dir, installed_authority
from kiki_tool_broker.registry import (
    Provider,
    Tool,
    ToolRegistry,
    caller_view,
    forwarded_caller,
)
from kiki_tool_broker.schemas import MAX_DOCUMENTS_PER_PROVIDER, Catalog, ToolSchema
from libkiki.config import ServiceConfig
from libkiki.constellation import GET_INFO
from libkiki.errors import (
    Cancelled,
    InvalidParams,
    KikiError,
    LimitExceeded,
    NotFound,
    PeerGone,
    PermissionDenied,
    Timeout,
    ValidationError,
)
from libkiki.paths import TOOLS_SOCKET, config_dir, socket_path, state_dir
from libkiki.peer import PeerCred
from libkiki.principals import is_kiki_service
from libkiki.rpc import Connection, Methods, RequestContext
from libkiki.rpc.messages import RequestId
from libkiki.rpc_service import serve_configured
from libkiki.service import ServiceContext

log = logging.getLogger(__name__)

INSTRUCTIONS = (
    "Tools of a Kiki device. Each tool's name is the NSID of its published lexicon; "
    "queries only read, procedures act on the device."
)


_ANNOUNCE_RETRY = 0.25  # seconds between tries to tell a listener that has fallen behind
_ANSWER_SLACK = 4096  # bytes of an answer besides a tool's output twice (id, keys, _meta)
_Future = asyncio.Future  # looked up once: tools_call is on every call's path


class BrokerConfig(ServiceConfig):
    call_timeout: float = 30.0
    policy_file: str = ""  # default: <config dir>/tool-policy.toml
    max_tools_per_provider: int = 512
    max_lexicons_per_provider: int = pydantic.Field(default=MAX_DOCUMENTS_PER_PROVIDER, ge=1)
    list_page_size: int = 500  # tools per tools/list page (nextCursor for the rest)
    max_listen_streams: int = 64  # subscriptions/listen streams open at once, all connections
    apps_dir: str = ""  # installed app manifests; default: where `kiki app install` puts them


class Broker:
    def __init__(
        self,
        ctx: ServiceContext,
        config: BrokerConfig,
        catalog: Catalog,
        policy: Policy,
        audit: AuditLog,
        apps_dir: Path | None = None,
    ) -> None:
        self.ctx = ctx
        self.config = config
        self.catalog = catalog
        self.policy = policy
        self.audit = audit
        self.registry = ToolRegistry()
        # Connections that did the initialize handshake: they get list_changed notifications.
        self.list_watchers: set[Connection] = set()
        # Open 2026-07-28 subscriptions/listen streams, (connection, id) -> wants list_changed.
        self.listen_streams: dict[tuple[Connection, RequestId], bool] = {}
        self.changed = asyncio.Event()
        self.serving = ""  # the status line's first part, once the socket is served
        # Forwarded calls that had to wait for a provider slot or relay progress: in tasks.
        self._forwarding: set[asyncio.Task[Any]] = set()
        self.own_uid = os.getuid()
        # Installed app manifests (kiki app install): an app's id is its NSID authority.
        self.apps_dir = apps_dir
        me = PeerCred(pid=os.getpid(), uid=os.getuid(), gid=os.getgid(), app_id="kiki-tool-broker")
        self.self_provider = Provider("kiki-tool-broker", me)
        self.builtin = BuiltinTools(self)
        self.result_meta = mcp.result_meta(ctx.version)  # every 2026-07-28 result's _meta
        self.methods = self._methods()

    # -- the method table --------------------------------------------------------------------
    # MCP's handlers take ``**extensions``: params a later revision (or an extension) adds are
    # ignored, not refused (MCP's schemas leave their params open: 2025-11-25 added ``task``,
    # 2026-07-28 ``requestState``). Kiki's own methods stay strict.

    def _methods(self) -> Methods:
        m = Methods()
        # Handlers that never wait are synchronous: answered as read, without a task each.
        m.register_sync("initialize", self.initialize)
        # Nothing to do: done as read, with no task.
        m.inline("notifications/initialized")(self.initialized)
        m.register_sync("server/discover", self.discover)
        m.register_sync("ping", self.ping)
        m.register_sync("tools/list", self.tools_list)
        m.register_sync("tools/call", self.tools_call)
        m.register(mcp.LISTEN, self.listen)
        m.register(mcp.REGISTER, self.register_tools)
        m.register(mcp.UNREGISTER, self.unregister_tools)
        m.register_sync(GET_INFO, self.get_info)
        return m

    def get_info(self, request: RequestContext) -> dict[str, Any]:
        return self.ctx.info()

    def initialize(
        self,
        request: RequestContext,
        protocolVersion: str = "",
        capabilities: dict[str, Any] | None = None,
        clientInfo: dict[str, Any] | None = None,
        **extensions: Any,
    ) -> dict[str, Any]:
        self.list_watchers.add(request.connection)
        return mcp.initialize_result(protocolVersion, self.ctx.version, INSTRUCTIONS)

    def initialized(self, params: object) -> None:
        return None

    def discover(self, request: RequestContext, **extensions: Any) -> dict[str, Any]:
        mcp.era(request.meta, self.result_meta)  # a version it does not speak: -32022
        return mcp.discover_result(self.result_meta, INSTRUCTIONS)

    def ping(self, request: RequestContext, **extensions: Any) -> dict[str, Any]:
        return mcp.empty_result(mcp.era(request.meta, self.result_meta))

    def tools_list(
        self, request: RequestContext, cursor: str | None = None, **extensions: Any
    ) -> dict[str, Any]:
        modern = mcp.era(request.meta, self.result_meta)
        # The tools this caller may call (MCP: the tools available to the requesting client);
        # what its policy denies it is left out, and a call of it is still refused.
        caller, _ = self._caller(request)
        tools = [t for t in self.registry if self._allows(caller, t)[0]]
        if cursor is not None:
            after = mcp.decode_cursor(cursor)
            if after is None:
                raise InvalidParams("invalid cursor", data={"cursor": cursor})
            tools = [t for t in tools if t.nsid > after]
        page = tools[: self.config.list_page_size]
        more = len(tools) > len(page)
        next_cursor = mcp.encode_cursor(page[-1].nsid) if more else None
        return mcp.list_result([t.mcp() for t in page], modern, next_cursor)

    async def listen(
        self,
        request: RequestContext,
        notifications: dict[str, Any] | None = None,
        **extensions: Any,
    ) -> dict[str, Any]:
        """A 2026-07-28 listen stream: acknowledged at once, then list_changed as the table
        moves, until the caller cancels it (no answer then) or the broker shuts down."""
        modern = mcp.era(request.meta, self.result_meta)
        if not isinstance(notifications, dict):
            raise InvalidParams("notifications must be an object")
        if len(self.listen_streams) >= self.config.max_listen_streams:
            raise LimitExceeded(
                f"too many listen streams (limit {self.config.max_listen_streams})",
                data={"limit": self.config.max_listen_streams},
            )
        conn, sid = request.connection, request.request_id
        honored = mcp.honored(notifications)
        await conn.notify(mcp.ACKNOWLEDGED, mcp.on_stream(sid, {"notifications": honored}))
        stream = (conn, sid)
        self.listen_streams[stream] = bool(honored)
        try:
            await conn.wait_closing()
        finally:
            self.listen_streams.pop(stream, None)
        return mcp.listen_result(sid, modern)

    # -- providers ---------------------------------------------------------------------------

    def _provider(self, conn: Connection) -> Provider:
        provider = conn.state.get("provider")
        if provider is None:
            name = conn.peer.app_id or f"pid {conn.peer.pid}"
            provider = conn.state["provider"] = Provider(name, conn.peer, conn)
        assert isinstance(provider, Provider)
        return provider

    async def register_tools(
        self,
        request: RequestContext,
        tools: Any,
        lexicons: Any = None,
        maxInFlight: Any = None,  # the wire's name
    ) -> dict[str, Any]:
        """Register ``tools`` (NSIDs; a repeated one counts once) for this connection, with the
        lexicon documents it sends: all or nothing. Nothing here awaits, so no other request
        sees a half-made registration. ``maxInFlight``: the most calls the provider takes at
        once, when fewer than the broker's ``max_in_flight`` (more wait here for a slot)."""
        wanted = self._nsid_list(tools)
        if maxInFlight is not None and (
            not isinstance(maxInFlight, int) or isinstance(maxInFlight, bool) or maxInFlight < 1
        ):
            raise InvalidParams("maxInFlight must be a positive integer")
        provider = self._provider(request.connection)
        limit = self.config.max_tools_per_provider
        if len(provider.tools) + len(wanted) > limit:
            raise InvalidParams(
                f"a provider may register at most {limit} tools", data={"limit": limit}
            )
        try:
            reserve = self._may_provide(provider, wanted)
            staged = self.catalog.stage(lexicons, owner=provider.id)
            entries = [self._tool_entry(staged.tool(nsid), provider) for nsid in wanted]
            before = self.registry.generation
            registered = self.registry.register(
                provider,
                entries,
                reserve=reserve,
                kiki_service=is_kiki_service(provider.cred, self.own_uid),
            )
        except KikiError as exc:
            # The operator's record of a refused registration: who, what, why.
            log.warning(
                "refused to register %s for %s (%s): %s",
                ", ".join(wanted),
                provider.name,
                provider.identity,
                exc.message,
            )
            raise
        self.catalog.commit(staged, registered)
        if maxInFlight is not None:
            request.connection.limit_requests(maxInFlight)
        if registered:
            log.info("provider %s registered %s", provider.name, ", ".join(registered))
        if self.registry.generation != before:
            self.changed.set()
        return {"registered": registered}

    async def unregister_tools(self, request: RequestContext, tools: Any) -> dict[str, Any]:
        """Unregister ``tools`` (a repeated NSID counts once), all of which this connection must
        have registered; else nothing changes."""
        wanted = self._nsid_list(tools)
        provider = self._provider(request.connection)
        before = self.registry.generation
        removed = self.registry.unregister(provider, wanted)
        self.catalog.release_tools(provider.id, removed)
        if removed:
            log.info("provider %s unregistered %s", provider.name, ", ".join(removed))
        if self.registry.generation != before:
            self.changed.set()
        return {"unregistered": removed}

    def _may_provide(self, provider: Provider, wanted: list[str]) -> set[str]:
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

    @staticmethod
    def _nsid_list(tools: Any) -> list[str]:
        """``tools`` of kiki/registerTools and kiki/unregisterTools: a list of NSID strings,
        in order, each once."""
        if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
            raise InvalidParams("tools must be a list of NSIDs")
        return list(dict.fromkeys(tools))

    @staticmethod
    def _tool_entry(schema: ToolSchema, provider: Provider) -> Tool:
        return Tool(
            schema.nsid,
            schema.kind,
            schema.description,
            schema.input_schema,
            schema.output_schema,
            schema.destructive,
            provider,
        )

    def _tool(self, nsid: str, provider: Provider) -> Tool:
        return self._tool_entry(self.catalog.tool(nsid), provider)

    async def connection_lost(self, conn: Connection) -> None:
        self.list_watchers.discard(conn)
        for stream in [s for s in self.listen_streams if s[0] is conn]:
            del self.listen_streams[stream]
        provider = conn.state.get("provider")
        if isinstance(provider, Provider):
            gone = self.registry.remove_provider(provider)
            self.catalog.drop_owner(provider.id)
            if gone:
                log.info("provider %s left; removed %s", provider.name, ", ".join(gone))
                self.changed.set()

    async def announce_changes(self) -> None:
        """Send ``list_changed`` whenever the table moves: to every initialized (handshake-era)
        connection, and on every listen stream that asked for it.

        Never waits on a listener: one that is not taking what it is sent (its write buffer is
        not empty) is owed the notification, and one owed notification stands for any number of
        changes; it is sent once the listener has caught up (retried every
        ``_ANNOUNCE_RETRY`` seconds), for as long as it listens.
        """
        owed: set[tuple[Connection, RequestId | None]] = set()
        while True:
            if owed:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_ANNOUNCE_RETRY):
                        await self.changed.wait()
            else:
                await self.changed.wait()
            if self.changed.is_set():
                self.changed.clear()
                # The status line counts the tools (systemctl, getInfo), while serving: not
                # over "draining" as providers leave during a stop.
                if self.serving and self.ctx.state == "ready":
                    self.ctx.status = f"{self.serving}; {len(self.registry)} tools"
                owed.update((conn, None) for conn in self.list_watchers)
                owed.update(stream for stream, wanted in self.listen_streams.items() if wanted)
            for target in list(owed):
                conn, subscription = target
                listening = (
                    conn in self.list_watchers
                    if subscription is None
                    else self.listen_streams.get(target, False)
                )
                params = None if subscription is None else mcp.on_stream(subscription)
                if not listening or conn.try_notify(mcp.LIST_CHANGED, params):
                    owed.discard(target)
                else:
                    self.ctx.counters["list_changed_deferred"] += 1

    # -- calls -------------------------------------------------------------------------------

    def tools_call(
        self,
        request: RequestContext,
        name: str,
        arguments: dict[str, Any] | None = None,
        **extensions: Any,
    ) -> dict[str, Any] | asyncio.Future[dict[str, Any]]:
        """Checked, then answered at once for the broker's own tools; a forwarded call returns
        a future that its provider's reply settles (:meth:`_forward_soon`). Either way the
        audit line is written before the answer is given."""
        started = time.monotonic()
        modern = mcp.era(request.meta, self.result_meta)
        arguments = {} if arguments is None else arguments
        caller, view = self._caller(request)
        answering: dict[str, Any] | None = None  # the provider's view, once the tool is known
        try:
            if not isinstance(name, str):
                raise InvalidParams("name must be a string")
            try:
                tool = self.registry.get(name)
            except NotFound:
                raise InvalidParams(f"unknown tool: {name}", data={"name": name}) from None
            answering = tool.provider.view
            if not isinstance(arguments, dict):
                raise InvalidParams("arguments must be an object")
            allowed, reason = self._allows(caller, tool)
            if not allowed:
                raise PermissionDenied(f"{request.peer.describe()} may not call {name}: {reason}")
            schema = self.catalog.tool(name)
            schema.validate_input(arguments)
            # What an answer line has for the output (twice) once the caller's id is in it.
            rid = request.request_id
            room = self.config.max_line - (len(orjson.dumps(rid)) if isinstance(rid, str) else 24)
            if tool.provider is not self.self_provider:
                return self._forward_soon(
                    tool, schema, request, arguments, view, started, modern, room
                )
            try:
                output = self.builtin.call(tool.nsid, request, arguments)
            except (InvalidParams, NotFound) as exc:
                result, outcome, code = _builtin_result(schema, modern, room, None, exc)
            else:
                if isinstance(output, _Future):  # a built-in tool that waits (readAuditLog's
                    # verify): answered when it is done, as a forwarded call is
                    settle = functools.partial(_builtin_result, schema, modern, room)
                    return self._answer_later(
                        output, name, settle, arguments, view, started, tool.provider.view
                    )
                result, outcome, code = _checked_result(schema, output, modern, room)
        except Exception as exc:
            self._audit(view, name, arguments, started, *_outcome(exc), provider=answering)
            raise
        self._audit(view, name, arguments, started, outcome, code, tool.provider.view)
        return result

    def _forward_soon(
        self,
        tool: Tool,
        schema: ToolSchema,
        request: RequestContext,
        arguments: dict[str, Any],
        view: dict[str, Any],
        started: float,
        modern: dict[str, Any] | None,
        room: int,
    ) -> asyncio.Future[dict[str, Any]]:
        """Forward a call; its answer is a future that the provider's reply settles.

        The request goes out at once, with no task, when the provider has a free in-flight
        slot and there is no progress to relay. Otherwise a task waits for the slot and relays
        the progress (:meth:`_forward`). Either way :meth:`_call_done` writes the audit line
        and then settles the answer, also when the call is cancelled before it got anywhere.
        """
        sent: asyncio.Future[Any] | None = None
        if request.progress_token is None:
            try:
                sent = tool.provider.connection.request_soon(
                    "tools/call",
                    _forward_params(tool, arguments, request),
                    timeout=self.config.call_timeout,
                )
            except KikiError as exc:  # the provider's connection has just closed
                sent = asyncio.get_running_loop().create_future()
                sent.set_exception(exc)
        if sent is None:
            task = asyncio.ensure_future(self._forward(tool, request, arguments, view))
            self._forwarding.add(task)
            task.add_done_callback(self._forwarding.discard)
            sent = task
        settle = functools.partial(self._settle, tool, schema, modern, room)
        return self._answer_later(
            sent, tool.nsid, settle, arguments, view, started, tool.provider.view
        )

    def _answer_later(
        self,
        sent: asyncio.Future[Any],
        nsid: str,
        settle: Callable[[Any, BaseException | None], tuple[dict[str, Any], str, int | None]],
        arguments: dict[str, Any],
        view: dict[str, Any],
        started: float,
        provider: dict[str, Any],
    ) -> asyncio.Future[dict[str, Any]]:
        """The caller's answer to a call whose tool side ends with ``sent``: settled (audited
        first) by :meth:`_call_done`. The caller cancelling or leaving cancels ``sent``, which
        tells a provider."""
        answer: asyncio.Future[dict[str, Any]] = sent.get_loop().create_future()
        sent.add_done_callback(
            functools.partial(
                self._call_done, answer, nsid, settle, arguments, view, started, provider=provider
            )
        )
        answer.add_done_callback(lambda _: sent.cancel())
        return answer

    def _call_done(
        self,
        answer: asyncio.Future[dict[str, Any]],
        nsid: str,
        settle: Callable[[Any, BaseException | None], tuple[dict[str, Any], str, int | None]],
        arguments: dict[str, Any],
        view: dict[str, Any],
        started: float,
        sent: asyncio.Future[Any],
        provider: dict[str, Any] | None = None,
    ) -> None:
        """The tool's side of a call that was not answered at once is over (a provider's
        reply, or a built-in tool that waited): audit it, then answer the caller. An error of
        the audit itself (a full disk) is the caller's answer too: an internal error."""
        if sent.cancelled():  # the caller cancelled or left: there is nobody to answer
            self._audit(view, nsid, arguments, started, "cancelled", None, provider)
            return
        error = sent.exception()
        try:
            try:
                result, outcome, code = settle(None if error is not None else sent.result(), error)
            except Exception as exc:
                self._audit(view, nsid, arguments, started, *_outcome(exc), provider=provider)
                raise
            self._audit(view, nsid, arguments, started, outcome, code, provider)
        except Exception as exc:  # the call's own error, or the audit's (a full disk)
            if not answer.done():
                answer.set_exception(exc)
            return
        if not answer.done():
            answer.set_result(result)

    async def finish_forwarding(self) -> None:
        """Cancel the calls still waiting for a provider slot, and wait for them (bounded)."""
        for task in self._forwarding:
            task.cancel()
        if self._forwarding:
            await asyncio.wait(self._forwarding, timeout=5)

    def _allows(self, caller: Caller, tool: Tool) -> tuple[bool, str]:
        return self.policy.allows(caller, tool.nsid, tool.kind, (tool.provider.cred.uid,))

    def _caller(self, request: RequestContext) -> tuple[Caller, dict[str, Any]]:
        who = request.connection.state.get("caller")
        if who is None:
            # A peer's identity is fixed when it connects (libkiki.peer: SO_PEERCRED, its
            # groups, its app id), so the caller and its audit view are made once.
            who = (Caller.of(request.peer), caller_view(request.peer))
            request.connection.state["caller"] = who
        assert isinstance(who, tuple)
        return who

    def _audit(
        self,
        view: dict[str, Any],
        name: object,
        arguments: Any,
        started: float,
        outcome: str,
        code: int | None,
        provider: dict[str, Any] | None = None,  # who answered (or was to): its identity
    ) -> None:
        self.ctx.counters[_COUNTER[outcome]] += 1
        self.audit.append(
            caller=view,
            tool=str(name),
            outcome=outcome,
            code=code,
            duration_us=int((time.monotonic() - started) * 1e6),
            arguments=arguments,
            provider=provider,
        )

    async def _forward(
        self,
        tool: Tool,
        request: RequestContext,
        arguments: dict[str, Any],
        caller: dict[str, Any],
    ) -> Any:
        """The provider's reply, waiting for an in-flight slot on its connection if need be and
        relaying its progress to the caller as it comes."""

        async def relay(progress: dict[str, Any]) -> None:
            relayed = {k: v for k, v in progress.items() if k != "progressToken"}
            await request.connection.notify(
                "notifications/progress", {"progressToken": request.progress_token, **relayed}
            )

        return await tool.provider.connection.request(
            "tools/call",
            _forward_params(tool, arguments, request),
            timeout=self.config.call_timeout,
            on_progress=relay if request.progress_token is not None else None,
        )

    def _settle(
        self,
        tool: Tool,
        schema: ToolSchema,
        modern: dict[str, Any] | None,
        room: int,
        reply: Any,
        error: BaseException | None,
    ) -> tuple[dict[str, Any], str, int | None]:
        """The caller's result for the provider's reply, or for the error its call ended in.

        A timeout and the provider leaving are the call's own errors, raised (reworded for the
        caller). Any error the provider answered (a Timeout or PeerGone of its own work too), and
        a malformed or ``isError`` reply, are tool failures: an ``isError`` result.
        """
        try:
            if error is None:
                output = _provider_output(tool, reply)
            elif isinstance(error, Timeout) and not error.remote:
                raise Timeout(
                    f"{tool.provider.name} did not answer {tool.nsid} within "
                    f"{self.config.call_timeout:g}s; the call was cancelled"
                ) from None
            elif isinstance(error, PeerGone) and not error.remote:
                raise PeerGone(
                    f"{tool.provider.name}, which provides {tool.nsid}, disconnected during the "
                    "call"
                ) from None
            elif isinstance(error, KikiError):
                raise ToolFailure(error.message, error.jsonrpc_code, error.data) from error
            else:
                raise error
        except ToolFailure as failure:
            return _failed_result(failure, modern)
        return _checked_result(schema, output, modern, room)


def _forward_params(
    tool: Tool, arguments: dict[str, Any], request: RequestContext
) -> dict[str, Any]:
    state = request.connection.state
    caller = state.get("forwarded")
    if caller is None:
        # Made once per connection: what a provider needs to decide by the same principals
        # (libkiki.principals) as the broker: groups and whose app id it is, besides the view.
        caller = state["forwarded"] = forwarded_caller(request.peer)
    return {"name": tool.nsid, "arguments": arguments, "_meta": {mcp.CALLER_META: caller}}


def _provider_output(tool: Tool, reply: Any) -> Any:
    """A provider's ``tools/call`` result: its structured content, or a ToolFailure."""
    if not isinstance(reply, dict):
        raise ToolFailure(
            f"{tool.provider.name} answered {tool.nsid} with a malformed result", -32603, None
        )
    if reply.get("isError"):
        text = _text_of(reply) or f"{tool.nsid} failed"
        # Its detail: where Kiki puts it, else whatever structure an MCP server sent with it.
        meta = reply.get("_meta")
        data = meta.get(mcp.ERROR_DATA_META) if isinstance(meta, dict) else None
        raise ToolFailure(text, None, reply.get("structuredContent") if data is None else data)
    return reply.get("structuredContent")


class ToolFailure(Exception):
    """The tool ran (or its provider answered) and failed: an ``isError`` result, not an error."""

    def __init__(self, message: str, code: int | None, data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.data = data


def _builtin_result(
    schema: ToolSchema,
    modern: dict[str, Any] | None,
    room: int,
    output: Any,
    error: BaseException | None,
) -> tuple[dict[str, Any], str, int | None]:
    """The MCP result of one of the broker's own tools: what it could not find is a tool
    error, as a provider's would be; anything else it raised is the call's error."""
    if isinstance(error, (InvalidParams, NotFound)):
        return _failed_result(ToolFailure(error.message, error.jsonrpc_code, error.data), modern)
    if error is not None:
        raise error
    return _checked_result(schema, output, modern, room)


def _failed_result(
    failure: ToolFailure, modern: dict[str, Any] | None
) -> tuple[dict[str, Any], str, int | None]:
    return mcp.tool_error_result(failure.message, failure.data, modern), "error", failure.code


def _checked_result(
    schema: ToolSchema, output: Any, modern: dict[str, Any] | None, room: int
) -> tuple[dict[str, Any], str, int | None]:
    """The MCP result for a tool's output, which must match its lexicon, and fit in an answer
    line (``room``: the line limit less the caller's id): the answer carries it twice (as
    structure and as JSON text, escaped once more), and one over the line limit would reach the
    caller as -32005 after an audit line saying ok."""
    try:
        schema.validate_output(output)
    except ValidationError as exc:
        message = f"the tool's output broke its lexicon: {exc}"
        return mcp.tool_error_result(message, exc.data, modern), "error", exc.jsonrpc_code
    if not schema.has_output:
        output = None  # nothing, or {}: the same no output
    text = orjson.dumps(output)
    if 3 * len(text) + _ANSWER_SLACK > room and (
        2 * len(text) + text.count(b'"') + text.count(b"\\") + _ANSWER_SLACK > room
    ):
        message = (
            f"the tool's output of {len(text)} bytes does not fit in an answer: with its text "
            "copy the answer would be over the line limit"
        )
        data = {"size": len(text), "room": room}
        return mcp.tool_error_result(message, data, modern), "error", LimitExceeded.jsonrpc_code
    return mcp.call_result(output, modern, text), "ok", None


def _text_of(result: dict[str, Any]) -> str:
    parts = result.get("content")
    if not isinstance(parts, list):
        return ""
    return "\n".join(
        p.get("text", "")
        for p in parts
        if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
    )


_COUNTER = {
    outcome: f"calls_{outcome}"
    for outcome in (
        "ok",
        "error",
        "denied",
        "invalid",
        "timeout",
        "provider-gone",
        "cancelled",
        "internal-error",
    )
}


def _outcome(exc: Exception) -> tuple[str, int | None]:
    """The audit outcome and code of a call that failed with ``exc``."""
    match exc:
        case PermissionDenied():
            outcome = "denied"
        case InvalidParams():
            outcome = "invalid"
        case Timeout():
            outcome = "timeout"
        case PeerGone():
            outcome = "provider-gone"
        case Cancelled():
            outcome = "cancelled"
        case KikiError():
            outcome = "error"
        case _:
            return "internal-error", -32603
    return outcome, exc.jsonrpc_code


@contextlib.asynccontextmanager
async def serve(ctx: ServiceContext) -> AsyncIterator[None]:
    config: BrokerConfig = ctx.config
    policy_path = (
        Path(config.policy_file) if config.policy_file else (config_dir() / "tool-policy.toml")
    )
    policy = Policy.load(policy_path)
    catalog = Catalog.load(max_documents=config.max_lexicons_per_provider)
    audit = AuditLog(state_dir())
    apps_dir = Path(config.apps_dir) if config.apps_dir else installed_apps_dir()
    broker = Broker(ctx, config, catalog, policy, audit, apps_dir)
    broker.builtin.register()

    async def reload() -> None:
        broker.policy = Policy.load(policy_path)
        log.info("reloaded %s", policy_path)
        broker.changed.set()  # what each caller's tools/list shows may have changed

    ctx.reload_hooks.append(reload)
    listener = ctx.listeners.unix("tools", socket_path(TOOLS_SOCKET))
    try:
        async with asyncio.TaskGroup() as tg:
            announcer = tg.create_task(broker.announce_changes())
            async with serve_configured(
                ctx,
                listener,
                broker.methods,
                request_timeout=config.call_timeout,
                on_disconnect=broker.connection_lost,
            ):
                how = "activated" if ctx.listeners.activated else "bound"
                broker.serving = f"serving {TOOLS_SOCKET} ({how})"
                ctx.status = f"{broker.serving}; {len(broker.registry)} tools"
                yield
            announcer.cancel()
    finally:
        try:
            await broker.finish_forwarding()  # their audit lines are written before the close
        finally:
            audit.close()
