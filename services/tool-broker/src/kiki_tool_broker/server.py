"""asyncio layer of the tool broker: MCP for callers, registration and forwarding for providers.

One socket, one method table. Any connection may call tools (``tools/list``, ``tools/call``) and
any connection may provide them (``kiki/registerTools``); the broker forwards each call to its
provider as a ``tools/call`` request on the provider's own connection, with the caller's
kernel-given identity in ``_meta["dev.kiki/caller"]``.

This module moves bytes and futures only: what each request means is decided by
:mod:`kiki_tool_broker.core`, which it asks and whose audit lines it writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from kiki_tool_broker import protocol as mcp
from kiki_tool_broker.announce import Audience
from kiki_tool_broker.audit import AuditLog
from kiki_tool_broker.calls import Admitted, Answer, AuditRecord, Joining
from kiki_tool_broker.config import BrokerConfig
from kiki_tool_broker.core import BrokerCore, Who
from kiki_tool_broker.events import OWN_STREAMS, SUBSCRIBE_AUDIT, EventStreams
from kiki_tool_broker.forwarding import Forwarder
from kiki_tool_broker.policy import Policy
from kiki_tool_broker.registry import Provider
from kiki_tool_broker.schemas import Catalog
from kiki_tool_broker.stdio import StdioSessions
from kiki_tool_broker.tools import BuiltinTools
from libkiki.constellation import GET_INFO
from libkiki.paths import TOOLS_SOCKET, state_dir
from libkiki.rpc import Connection, Methods, Reply, RequestContext
from libkiki.rpc_service import serve_configured
from libkiki.service import ServiceContext

log = logging.getLogger(__name__)

_ANNOUNCE_RETRY = 0.25  # seconds between tries to tell a listener that has fallen behind
_Future = asyncio.Future  # looked up once: tools_call is on every call's path


class Broker:
    """The broker's I/O: its method table, the connections, the forwarded calls in flight,
    announcing changes. What is decided (who may register and call what, each call's answer and
    audit line) is :class:`~kiki_tool_broker.core.BrokerCore`'s."""

    def __init__(self, ctx: ServiceContext, core: BrokerCore, audit: AuditLog) -> None:
        self.ctx = ctx
        self.core = core
        self.config = core.config
        self.audit = audit
        self.tools = BuiltinTools(core.registry, audit, self.info, core.config.max_line)
        self.streams = EventStreams(core, self._audit_line, ctx.counters)
        # Who hears of list_changed: handshake-era connections and listen streams.
        self.audience: Audience[Connection] = Audience(core.config.max_listen_streams)
        self.changed = asyncio.Event()
        self.serving = ""  # the status line's first part, once the socket is served
        self.forwarder = Forwarder(core.calls, self._write, ctx.counters)
        config = core.config
        # MCP hosts whose pipes kiki mcp hands over: served as the socket's connections are.
        self.stdio = StdioSessions(
            max_sessions=config.max_stdio_sessions,
            connection_options={
                "max_line": config.max_line,
                "max_in_flight": config.max_in_flight,
                "request_timeout": config.call_timeout,
            },
            drain_timeout=config.drain_timeout,
            counters=ctx.counters,
            on_disconnect=self.connection_lost,
            listening=self.audience.listening,
        )
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
        self.streams.add_methods(m)
        self.stdio.add_methods(m)
        return m

    def get_info(self, request: RequestContext) -> dict[str, Any]:
        return self.info()

    def info(self) -> dict[str, Any]:
        """The health answer, with the event streams' figures as of now: the gauges are put
        beside the running counters in the answer, never added into them (reading twice must
        report the same)."""
        info = self.ctx.info()
        counters = info["counters"]  # the context's copy, this answer's own
        self.streams.add_gauges(counters)
        counters["stdio_sessions_open"] = self.stdio.open
        counters["detached_running"] = self.forwarder.detached
        return info

    def initialize(
        self,
        request: RequestContext,
        protocolVersion: str = "",
        capabilities: dict[str, Any] | None = None,
        clientInfo: dict[str, Any] | None = None,
        **extensions: Any,
    ) -> dict[str, Any]:
        self.audience.watch(request.connection)
        return mcp.initialize_result(protocolVersion, self.ctx.version, mcp.INSTRUCTIONS)

    def initialized(self, params: object) -> None:
        return None

    def discover(self, request: RequestContext, **extensions: Any) -> dict[str, Any]:
        modern = self.core.result_meta
        mcp.era(request.meta, modern)  # a version it does not speak: -32022
        return mcp.discover_result(modern, mcp.INSTRUCTIONS)

    def ping(self, request: RequestContext, **extensions: Any) -> dict[str, Any]:
        return mcp.empty_result(mcp.era(request.meta, self.core.result_meta))

    def tools_list(
        self, request: RequestContext, cursor: str | None = None, **extensions: Any
    ) -> dict[str, Any]:
        modern = mcp.era(request.meta, self.core.result_meta)
        who = self._who(request)
        return self.core.list_tools(who, cursor, modern, self.core.remote(who, request.meta))

    async def listen(
        self,
        request: RequestContext,
        notifications: dict[str, Any] | None = None,
        **extensions: Any,
    ) -> dict[str, Any]:
        """A 2026-07-28 listen stream: acknowledged at once, then list_changed as the table
        moves, until the caller cancels it (no answer then) or the broker shuts down."""
        modern = mcp.era(request.meta, self.core.result_meta)
        honored = self.audience.admit(notifications)
        conn, sid = request.connection, request.request_id
        stream = (conn, sid)
        self.audience.open(stream, honored)  # counted before any wait: the limit holds
        if uris := self.streams.resources.listen(request, notifications):
            honored = {**honored, "resourceSubscriptions": uris}
        try:
            await conn.notify(mcp.ACKNOWLEDGED, mcp.on_stream(sid, {"notifications": honored}))
            self.streams.resources.acknowledged(conn, sid)
            await conn.wait_closing()
        finally:
            self.audience.close(stream)
            self.streams.resources.unlisten(conn, sid)
        return mcp.listen_result(sid, modern)

    # -- providers ---------------------------------------------------------------------------

    def _provider(self, conn: Connection) -> Provider:
        provider = conn.state.get("provider")
        if provider is None:
            provider = conn.state["provider"] = self.core.provider(conn.peer, conn)
        assert isinstance(provider, Provider)
        return provider

    async def register_tools(
        self,
        request: RequestContext,
        tools: Any = None,
        lexicons: Any = None,
        maxInFlight: Any = None,  # the wire's name
        subscriptions: Any = None,
        privateSubscriptions: Any = None,  # the wire's name
    ) -> dict[str, Any]:
        """Register ``tools`` for this connection (:meth:`BrokerCore.register`); nothing here
        awaits, so no other request sees a half-made registration. ``maxInFlight``: the most
        calls the provider takes at once, when fewer than the broker's ``max_in_flight`` (more
        wait here for a slot); ``privateSubscriptions``: streams only their provider's user may
        follow by default."""
        conn = request.connection
        provider = self._provider(conn)
        done = self.core.register_all(
            provider, tools, lexicons, maxInFlight, subscriptions, privateSubscriptions
        )
        if maxInFlight is not None:
            conn.limit_requests(maxInFlight)
        if done.tools:
            self.changed.set()
        self.streams.registered(provider, done.actions)
        answer: dict[str, Any] = {"registered": done.tools}
        if subscriptions is not None:
            answer["subscriptions"] = done.streams
        return answer

    async def unregister_tools(
        self, request: RequestContext, tools: Any = None, subscriptions: Any = None
    ) -> dict[str, Any]:
        done = self.core.unregister_all(self._provider(request.connection), tools, subscriptions)
        if done.tools:
            self.changed.set()
        self.streams.carry(done.actions)
        answer: dict[str, Any] = {"unregistered": done.tools}
        if subscriptions is not None:
            answer["subscriptions"] = done.streams
        return answer

    async def connection_lost(self, conn: Connection) -> None:
        self.audience.forget(conn)
        self.streams.connection_lost(conn)
        provider = conn.state.get("provider")
        if isinstance(provider, Provider):
            self.streams.provider_gone(provider)
            if self.core.drop_provider(provider):
                self.changed.set()

    async def announce_changes(self) -> None:
        """Send ``list_changed`` whenever the table moves, to its :class:`Audience`. Never
        waits on a listener: one that is not taking what it is sent (its write buffer is not
        empty) is told once it has caught up, retried every ``_ANNOUNCE_RETRY`` seconds."""
        audience = self.audience
        while True:
            if audience.owed:
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
                    self.ctx.status = f"{self.serving}; {len(self.core.registry)} tools"
                audience.changed()
            for target in audience.due():
                conn, subscription = target
                params = None if subscription is None else mcp.on_stream(subscription)
                if conn.try_notify(mcp.LIST_CHANGED, params):
                    audience.told(target)
                else:
                    self.ctx.counters["list_changed_deferred"] += 1

    # -- calls -------------------------------------------------------------------------------

    def _who(self, request: RequestContext) -> Who:
        state = request.connection.state
        who: Who | None = state.get("caller")
        if who is None:
            who = state["caller"] = self.core.identify(request.peer)
        return who

    def tools_call(
        self,
        request: RequestContext,
        name: str,
        arguments: dict[str, Any] | None = None,
        **extensions: Any,
    ) -> dict[str, Any] | Reply | asyncio.Future[dict[str, Any]]:
        """Decided by the core; answered at once for the broker's own tools (and a replay), while
        a forwarded call returns a reply that its provider's reply settles (:class:`Forwarder`),
        and a duplicate of a keyed call running, a future that call's answer settles. Either way
        the audit line is written before the answer is given."""
        started = time.monotonic()
        meta = request.meta
        modern = mcp.era(meta, self.core.result_meta)
        call = self.core.calls.call(
            self._who(request), name, arguments, request.request_id, modern, started, meta
        )
        if isinstance(call, Answer):
            return self._answer(call)
        if isinstance(call, Joining):
            return self.forwarder.join(call)
        if call.params is not None:
            return self.forwarder.forward_soon(call, request)
        try:
            output = self.tools.call(call.tool.nsid, call.arguments)
        except Exception as exc:
            return self._answer_own(call, self.core.calls.settle(call, None, exc))
        if isinstance(output, _Future):  # a built-in tool that waits (readAuditLog's verify)
            # is answered as a forwarded call
            return self.forwarder.answer_later(call, output, request.connection)
        return self._answer_own(call, self.core.calls.settle(call, output, None))

    def _answer_own(self, call: Admitted, answer: Answer) -> dict[str, Any]:
        """:meth:`_answer` for one of the broker's own tools, whose answer its idempotency key
        then keeps (or forgets, when its audit line could not be written)."""
        if call.token is None:
            return self._answer(answer)
        try:
            self._write(answer)
        except Exception:
            self.forwarder.settled(call, None)
            raise
        self.forwarder.settled(call, answer)
        if answer.error is not None:
            raise answer.error
        assert answer.result is not None
        return answer.result

    def _answer(self, answer: Answer) -> dict[str, Any]:
        """``answer``'s result, or its error raised, once its audit line is written. An error
        of the audit itself (a full disk) is raised instead: an internal error."""
        self._write(answer)
        if answer.error is not None:
            raise answer.error
        assert answer.result is not None
        return answer.result

    def _audit_line(self, **fields: Any) -> None:
        """Append an audit line (see :meth:`_appended`)."""
        self._appended(self.audit.append(**fields))

    def _appended(self, entry: dict[str, Any]) -> None:
        """What follows every audit line written: the audit stream's subscribers get it."""
        self.streams.publish_own(SUBSCRIBE_AUDIT, entry)

    def _write(self, record: AuditRecord) -> None:
        """Count a call's record and append its audit line (see :meth:`_appended`)."""
        self.ctx.counters[record.counter] += 1
        entry = self.audit.append(
            caller=record.caller,
            tool=record.tool,
            outcome=record.outcome,
            code=record.code,
            duration_us=int((time.monotonic() - record.started) * 1e6),
            arguments=record.arguments,
            provider=record.provider,
            on_behalf_of=record.on_behalf_of,
        )
        self._appended(entry)


@contextlib.asynccontextmanager
async def serve(ctx: ServiceContext) -> AsyncIterator[None]:
    config: BrokerConfig = ctx.config
    policy_path = config.policy_path()
    policy = Policy.load(policy_path)
    catalog = Catalog.load(max_documents=config.max_lexicons_per_provider)
    audit = AuditLog(state_dir())
    apps_dir = config.apps_path()
    core = BrokerCore(config, catalog, policy, version=ctx.version, apps_dir=apps_dir)
    broker = Broker(ctx, core, audit)
    core.register_own(broker.tools.names)
    core.declare_own_streams(OWN_STREAMS)

    async def reload() -> None:
        core.policy = Policy.load(policy_path)
        log.info("reloaded %s", policy_path)
        broker.streams.policy_reloaded()  # subscriptions it no longer allows end, "denied"
        broker.changed.set()  # what each caller's tools/list shows may have changed

    ctx.reload_hooks.append(reload)
    listener = ctx.listen()
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
                ctx.status = f"{broker.serving}; {len(core.registry)} tools"
                yield
                broker.streams.shutdown()  # each subscriber is told, as far as it reads
            announcer.cancel()
    finally:
        try:
            await broker.forwarder.finish()  # their audit lines are written before the close
        finally:
            audit.close()
