"""Calling and providing tools on the device's tool broker (``tools.sock``).

For agents::

    async with ToolClient() as tools:
        for tool in await tools.list():
            print(tool["name"])
        now = await tools.call("dev.kiki.media.nowPlaying")

For apps, decorate a function with the NSID of its lexicon; its input and output may be pydantic
models (the generated bindings) or plain dicts::

    provider = ToolProvider(lexicons=[my_lexicon_json])

    @provider.tool("org.example.echo")
    async def echo(args: EchoInput, call: ToolCall) -> EchoOutput:
        return EchoOutput(text=args.text)

    async with provider.connect():
        await provider.serve_forever()

A service that must stay registered across broker restarts runs
``await provider.keep_registered()`` instead (until cancelled).

Event streams (lexicon ``subscription`` types): a client iterates a subscription
(:mod:`libkiki.streams_client`), a provider serves one as an async generator
(:mod:`libkiki.streams_provider`)::

    async with tools.subscribe("dev.kiki.media.subscribePlayback") as stream:
        async for message in stream.messages():
            ...

    @provider.subscription("org.example.ticks")
    async def ticks(params: dict[str, Any], stream: StreamContext) -> AsyncIterator[dict]:
        while True:
            yield {"now": time.time()}
            await asyncio.sleep(1)

A stream of someone's own data is declared ``@provider.subscription(nsid, private=True)``: the
broker then lets only root, the provider's own user and those a rule names follow it.

The broker validates every call's input against the lexicon before it reaches the provider and
the output after, and attaches the caller's identity (``call.caller``), which the kernel gave
it: a provider never needs to trust a caller's claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar, get_type_hints, overload

import pydantic

from libkiki.backoff import RestartBackoff
from libkiki.errors import (
    InvalidParams,
    KikiError,
    NotFound,
    PeerGone,
    ProtocolError,
    ToolError,
)
from libkiki.framing import DEFAULT_MAX_LINE
from libkiki.paths import TOOLS_SOCKET, socket_path
from libkiki.peer import PeerCred
from libkiki.rpc import Connection, Methods, ProgressCallback, RequestContext, connect_unix
from libkiki.rpc.connection import DEFAULT_MAX_IN_FLIGHT
from libkiki.streams_client import DEFAULT_MAX_QUEUE, StreamRouter
from libkiki.streams_client import Ended as Ended
from libkiki.streams_client import Event as Event
from libkiki.streams_client import Lost as Lost
from libkiki.streams_client import Status as Status
from libkiki.streams_client import Subscription as Subscription
from libkiki.streams_provider import ProvidedStreams, StreamFunc
from libkiki.streams_provider import StreamContext as StreamContext

log = logging.getLogger(__name__)

CLIENT_INFO = {"name": "libkiki", "version": "0"}
HANDSHAKE_VERSION = "2025-11-25"
CALLER_META = "dev.kiki/caller"  # the caller's kernel-given identity, on a forwarded call
ERROR_DATA_META = "dev.kiki/errorData"  # a tool error's data (its structuredContent cannot)
# A retried call's key: the broker answers a repeat with the first call's answer.
IDEMPOTENCY_KEY_META = "dev.kiki/idempotencyKey"
# The remote person a trusted delegate calls for ({"subject": ..., "session": ...}); on a
# forwarded call, the broker tells the provider the same, beside the caller.
ON_BEHALF_OF_META = "dev.kiki/onBehalfOf"


M = TypeVar("M")


def _path(path: str | os.PathLike[str] | None) -> Path:
    return Path(path) if path is not None else socket_path(TOOLS_SOCKET)


class ToolClient:
    """An MCP client of the broker over its Unix socket.

    ``timeout`` bounds each request (a call may override it). ``max_in_flight`` (calls sent at
    once; more wait for a slot) and ``max_line`` (bytes in one message) are the connection's
    limits: raise them to match a broker configured above libkiki's defaults. ``bindings`` are
    generated binding modules (:mod:`libkiki.lexicon.codegen`, e.g. an installed app's): a
    subscription to an NSID one of them has is parsed into its message type.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        timeout: float = 60.0,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_line: int = DEFAULT_MAX_LINE,
        bindings: Iterable[ModuleType] = (),
    ) -> None:
        self.path = _path(path)
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.max_line = max_line
        self.bindings = list(bindings)
        self._stack = contextlib.AsyncExitStack()
        self._conn: Connection | None = None
        self._streams = StreamRouter()
        self._watch: asyncio.Task[None] | None = None
        self.server: dict[str, Any] = {}
        self.list_changed: Callable[[], Awaitable[None]] | None = None

    async def __aenter__(self) -> ToolClient:
        methods = Methods()
        self._streams = StreamRouter()
        self._streams.install(methods)

        @methods.method("notifications/tools/list_changed")
        async def changed(ctx: RequestContext) -> None:
            if self.list_changed is not None:
                await self.list_changed()

        conn = await self._stack.enter_async_context(
            connect_unix(
                self.path,
                methods,
                max_line=self.max_line,
                max_in_flight=self.max_in_flight,
                request_timeout=self.timeout,
            )
        )
        self._conn = conn
        self._streams.connection_or_none = conn
        try:
            self.server = await conn.request(
                "initialize",
                {
                    "protocolVersion": HANDSHAKE_VERSION,
                    "capabilities": {},
                    "clientInfo": CLIENT_INFO,
                },
            )
            await conn.notify("notifications/initialized")
        except BaseException:
            # __aexit__ never runs for a failed (or cancelled) enter: without this the socket
            # stays open and holds one of the broker's connections for good.
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._conn = None
        try:
            await self._stack.aclose()
        finally:
            if self._watch is not None:
                self._watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._watch
                self._watch = None
            self._streams.gone(PeerGone("the ToolClient was closed"))

    async def _watch_connection(self, conn: Connection) -> None:
        await conn.wait_closed()
        self._streams.gone(PeerGone("the connection to the broker was lost"))

    @property
    def connection(self) -> Connection:
        if self._conn is None:
            raise KikiError("ToolClient is not connected; use `async with ToolClient()`")
        return self._conn

    async def streams(self, *, max_pages: int = 1000) -> list[dict[str, Any]]:
        """The event streams served now that this client may subscribe to (``kiki/listStreams``,
        following ``nextCursor``): each ``nsid``, ``description`` and ``provider`` (its kernel
        identity, as :meth:`list` shows a tool's in ``_meta["dev.kiki/provider"]``)."""
        streams: list[dict[str, Any]] = []
        params: dict[str, Any] = {}
        for _ in range(max_pages):
            result = await self.connection.request("kiki/listStreams", params)
            streams.extend(result["streams"])
            cursor = result.get("nextCursor")
            if not cursor:
                return streams
            params = {"cursor": cursor}
        raise ProtocolError(f"kiki/listStreams did not end within {max_pages} pages")

    async def list(
        self, *, max_pages: int = 1000, on_behalf_of: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Every tool, following ``nextCursor`` from page to page.

        ``on_behalf_of`` (``{"subject": ..., "session": ...}``): list what that remote person
        may call, decided as their calls are (:meth:`call`); accepted from a delegate the
        broker's policy trusts only (else :class:`~libkiki.errors.PermissionDenied`)."""
        tools: list[dict[str, Any]] = []
        meta = None if on_behalf_of is None else {ON_BEHALF_OF_META: dict(on_behalf_of)}
        params: dict[str, Any] = {} if meta is None else {"_meta": meta}
        for _ in range(max_pages):
            result = await self.connection.request("tools/list", params)
            tools.extend(result["tools"])
            cursor = result.get("nextCursor")
            if not cursor:
                return tools
            params = {"cursor": cursor} if meta is None else {"cursor": cursor, "_meta": meta}
        raise ProtocolError(f"tools/list did not end within {max_pages} pages")

    async def call_raw(
        self,
        nsid: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 -- also cancels the call at the broker
        on_progress: ProgressCallback | None = None,
        idempotency_key: str | None = None,
        on_behalf_of: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """The whole MCP ``tools/call`` result (``content``, ``structuredContent``, ``isError``).
        See :meth:`call` for ``idempotency_key`` and ``on_behalf_of``."""
        params: dict[str, Any] = {"name": nsid, "arguments": arguments or {}}
        meta: dict[str, Any] = {}
        if idempotency_key is not None:
            meta[IDEMPOTENCY_KEY_META] = idempotency_key
        if on_behalf_of is not None:
            meta[ON_BEHALF_OF_META] = dict(on_behalf_of)
        if meta:
            params["_meta"] = meta
        result: dict[str, Any] = await self.connection.request(
            "tools/call",
            params,
            timeout=timeout,
            on_progress=on_progress,
        )
        return result

    async def call(
        self,
        nsid: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 -- also cancels the call at the broker
        on_progress: ProgressCallback | None = None,
        idempotency_key: str | None = None,
        on_behalf_of: Mapping[str, str] | None = None,
    ) -> Any:
        """The tool's structured output; a tool-level failure raises :class:`ToolError`.

        ``idempotency_key`` (1 to 128 characters, unique per intended call): a retry with the
        same key, arguments and tool gets the first call's answer without the tool running
        again, within the broker's window (in its memory: after a broker restart it runs).
        ``on_behalf_of`` (``{"subject": ..., "session": ...}``): the remote person this call
        is for, which the broker accepts from a delegate its policy trusts only (else
        :class:`~libkiki.errors.PermissionDenied`); policy then decides for that person."""
        result = await self.call_raw(
            nsid,
            arguments,
            timeout=timeout,
            on_progress=on_progress,
            idempotency_key=idempotency_key,
            on_behalf_of=on_behalf_of,
        )
        if result.get("isError"):
            texts = [
                c.get("text", "")
                for c in result.get("content", [])
                if isinstance(c, dict) and c.get("type") == "text"
            ]
            meta = result.get("_meta")
            data = meta.get(ERROR_DATA_META) if isinstance(meta, dict) else None
            raise ToolError("\n".join(texts) or f"{nsid} failed", data=data)
        return result.get("structuredContent")

    @overload
    def subscribe(
        self,
        nsid: str,
        /,
        *,
        message_type: type[M],
        params: Mapping[str, Any] | None = None,
        max_queue: int = DEFAULT_MAX_QUEUE,
        on_behalf_of: Mapping[str, str] | None = None,
        **kwparams: Any,
    ) -> Subscription[M]: ...
    @overload
    def subscribe(
        self,
        nsid: str,
        /,
        *,
        message_type: None = None,
        params: Mapping[str, Any] | None = None,
        max_queue: int = DEFAULT_MAX_QUEUE,
        on_behalf_of: Mapping[str, str] | None = None,
        **kwparams: Any,
    ) -> Subscription[Any]: ...

    def subscribe(
        self,
        nsid: str,
        /,
        *,
        message_type: Any = None,
        params: Mapping[str, Any] | None = None,
        max_queue: int = DEFAULT_MAX_QUEUE,
        on_behalf_of: Mapping[str, str] | None = None,
        **kwparams: Any,
    ) -> Subscription[Any]:
        """A subscription to the stream ``nsid`` with the lexicon's parameters (``params``
        and/or keywords); see :mod:`libkiki.streams_client`. Nothing is sent until it is
        entered (``async with``) or first iterated.

        Messages are parsed into ``message_type`` (a generated binding, or any type pydantic
        validates), else into the message type of the first of :attr:`bindings` that has
        ``nsid``, else left as the broker's JSON. ``max_queue`` bounds the items held while the
        reader is behind (the oldest messages go first, told as a ``Lost``).
        ``on_behalf_of`` (``{"subject": ..., "session": ...}``): the remote person the
        subscription is for, as for :meth:`call`: accepted from a delegate the broker's policy
        trusts only (else the opening raises :class:`~libkiki.errors.PermissionDenied`), and
        the policy then decides for that person.
        """
        if self._conn is None:
            raise KikiError("ToolClient is not connected; use `async with ToolClient()`")
        if self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(
                self._watch_connection(self._conn), name=f"kiki-streams {self.path}"
            )
        given = {**(params or {}), **kwparams}
        kind = message_type if message_type is not None else self._binding(nsid)
        parse = _parser(kind) if kind is not None else None
        meta = None if on_behalf_of is None else {ON_BEHALF_OF_META: dict(on_behalf_of)}
        return self._streams.subscription(nsid, given, parse, max_queue, meta)

    def _binding(self, nsid: str) -> Any:
        for module in self.bindings:
            endpoints = getattr(module, "ENDPOINTS", None)
            found = endpoints.get(nsid) if isinstance(endpoints, dict) else None
            if isinstance(found, dict) and "message" in found:
                return found["message"]
        return None


def _parser(kind: Any) -> Callable[[Any], Any]:
    if isinstance(kind, type) and issubclass(kind, pydantic.BaseModel):
        return kind.model_validate
    # A union of lexicon objects is a type alias, not a class: pydantic validates it all the same.
    return pydantic.TypeAdapter(kind).validate_python


@dataclass(frozen=True, slots=True)
class ToolCall:
    """What a provider's tool function learns about the call beyond its input."""

    nsid: str
    caller: dict[str, Any]
    request: RequestContext

    async def progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> None:
        await self.request.progress(progress, total, message)

    @property
    def peer(self) -> PeerCred | None:
        """The caller as the broker's kernel identified it, to match principals against
        (:mod:`libkiki.principals`); None when the broker said nothing usable. From a broker
        that does not say whose an app id is (no ``groups``), the app id is taken as its
        user's word: it then grants only beside a user term."""
        c = self.caller
        ids = [c.get(k) for k in ("uid", "gid", "pid")]
        uid, gid, pid = (v if isinstance(v, int) and not isinstance(v, bool) else -1 for v in ids)
        if min(uid, gid, pid) < 0:
            return None
        app_id = c.get("appId") if isinstance(c.get("appId"), str) else None
        groups = c.get("groups")
        told = isinstance(groups, list) and all(isinstance(g, int) for g in groups)
        app_user = c.get("appUser") if told else uid
        return PeerCred(
            pid,
            uid,
            gid,
            app_id,
            app_user=app_user if isinstance(app_user, int) and app_id else None,
            groups=frozenset(groups) if told and isinstance(groups, list) else frozenset(),
        )


ToolFunc = Callable[..., Awaitable[Any]]
F = TypeVar("F", bound=ToolFunc)
G = TypeVar("G", bound=StreamFunc)


@dataclass(frozen=True, slots=True)
class _Entry:
    func: ToolFunc
    input_model: type[pydantic.BaseModel] | None


class ToolProvider:
    """Serves tools to the broker over one connection (the broker calls us on it).

    ``max_in_flight`` (calls handled at once; registration tells the broker, which holds
    further calls until one ends) and ``max_line`` (bytes in one message: raise it to match a
    broker configured above libkiki's 1 MiB, or longer calls fail here) are the connection's
    limits.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        lexicons: list[dict[str, Any]] | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_line: int = DEFAULT_MAX_LINE,
    ) -> None:
        self.path = _path(path)
        self.lexicons = list(lexicons or [])
        self.max_in_flight = max_in_flight
        self.max_line = max_line
        self._tools: dict[str, _Entry] = {}
        self.streams = ProvidedStreams()
        self._conn: Connection | None = None

    def subscription(self, nsid: str, *, private: bool = False) -> Callable[[G], G]:
        """Serve the async generator ``gen(params, stream)`` as the subscription ``nsid``
        (:mod:`libkiki.streams_provider`); decorate every one before :meth:`connect`.

        ``private=True`` declares a stream of someone's own data (``privateSubscriptions``, at
        every registration): the stream's generator never learns who subscribes, so the broker
        decides, and lets only root, this provider's own user and those an ``allow`` rule
        naming the NSID outright follow it (not its ``default_group``, never a remote person).
        """

        def decorator(func: G) -> G:
            if self._conn is not None:
                raise RuntimeError(
                    f"subscription {nsid}: decorate subscriptions before connect(); this "
                    "provider is connected"
                )
            self.streams.add(nsid, func, private=private)
            return func

        return decorator

    def tool(self, nsid: str) -> Callable[[F], F]:
        """Serve ``func`` as the tool ``nsid``; decorate every tool before :meth:`connect`."""

        def decorator(func: F) -> F:
            # The broker learns the tools once, at registration: a later one would never be
            # called, and a second function for one NSID would silently replace the first.
            if self._conn is not None:
                raise RuntimeError(
                    f"tool {nsid}: decorate tools before connect(); this provider is connected"
                )
            if nsid in self._tools:
                raise ValueError(f"tool {nsid}: this provider already has a function for it")
            is_async: bool = inspect.iscoroutinefunction(func)  # no narrowing of F
            if not is_async:
                raise TypeError(f"tool {nsid}: {func.__name__} must be an async function")
            try:
                hints = get_type_hints(func)
            except NameError as exc:
                raise TypeError(
                    f"tool {nsid}: cannot resolve the type hints of {func.__name__}: {exc}"
                ) from None
            params = list(inspect.signature(func).parameters)
            first = hints.get(params[0]) if params else None
            model = (
                first if isinstance(first, type) and issubclass(first, pydantic.BaseModel) else None
            )
            self._tools[nsid] = _Entry(func, model)
            return func

        return decorator

    @property
    def nsids(self) -> list[str]:
        """The tools' NSIDs (the subscriptions' are :attr:`subscription_nsids`)."""
        return sorted(self._tools)

    @property
    def subscription_nsids(self) -> list[str]:
        return self.streams.nsids

    def _served(self) -> str:
        return ", ".join(self.nsids + self.subscription_nsids)

    def _methods(self) -> Methods:
        methods = Methods()
        self.streams.install(methods)

        @methods.method("tools/call")
        async def call(
            ctx: RequestContext, name: str, arguments: dict[str, Any] | None = None
        ) -> dict[str, Any]:
            entry = self._tools.get(name)
            if entry is None:
                raise NotFound(f"this provider has no tool {name}")
            caller = (ctx.meta or {}).get(CALLER_META, {})
            args: Any = arguments or {}
            if entry.input_model is not None:
                try:
                    args = entry.input_model.model_validate(args)
                except pydantic.ValidationError as exc:
                    raise InvalidParams(str(exc.errors()[0]["msg"])) from None
            output = await entry.func(args, ToolCall(name, caller, ctx))
            if isinstance(output, pydantic.BaseModel):
                output = output.model_dump(mode="json", by_alias=True)
            return {"structuredContent": output, "isError": False}

        return methods

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[Connection]:
        """Connect and register every decorated tool; unregistered when the block exits."""
        try:
            async with self._registered() as conn:
                yield conn
        except _Refused as refused:
            log.warning("the broker refused to register %s: %s", self._served(), refused.error)
            raise refused.error from None

    @contextlib.asynccontextmanager
    async def _registered(self) -> AsyncIterator[Connection]:
        async with connect_unix(
            self.path,
            self._methods(),
            max_line=self.max_line,
            max_in_flight=self.max_in_flight,
            request_timeout=None,
        ) as conn:
            # Set before registering, so that no tool can be decorated after the list is sent;
            # cleared however registration ends (e.g. Conflict), so a refused provider is not
            # left looking connected.
            self._conn = conn
            registration: dict[str, Any] = {
                "tools": self.nsids,
                "lexicons": self.lexicons,
                # So that a broker allowing more never sends more than we take.
                "maxInFlight": self.max_in_flight,
            }
            if self.subscription_nsids:  # a broker without streams is not shown the key
                registration["subscriptions"] = self.subscription_nsids
            if self.streams.private_nsids:  # sent on every registration: a broker restarted
                # since knows nothing of the last one, and would serve them as public.
                registration["privateSubscriptions"] = self.streams.private_nsids
            try:
                try:
                    await conn.request("kiki/registerTools", registration)
                except KikiError as exc:
                    raise _Refused(exc) from None
                yield conn
            finally:
                self._conn = None
                await self.streams.stop()

    async def serve_forever(self) -> None:
        if self._conn is None:
            raise KikiError("ToolProvider is not connected; use `async with provider.connect()`")
        await self._conn.wait_closed()

    async def keep_registered(self, backoff: RestartBackoff | None = None) -> None:
        """Stay registered until cancelled: what a service offering tools runs.

        The broker may start after the service, restart or refuse us (another provider holds
        one of our NSIDs, its policy says no): none of that ends the service. Each time the
        connection cannot be made, is refused or is lost, the next attempt waits
        ``backoff``'s delay (:class:`~libkiki.backoff.RestartBackoff`, 0.5 s doubling up to
        30 s; a registration held ``stable_after`` seconds starts it over). A refusal is logged
        as a warning once per distinct reason, a broker that is not there at debug level.
        """
        backoff = backoff if backoff is not None else RestartBackoff()
        refusals: set[str] = set()
        tools = self._served()
        while True:
            backoff.started()
            try:
                async with self._registered() as conn:
                    backoff.ready(time.monotonic())
                    refusals.clear()  # a refusal after this registration is news again
                    log.info("registered %s on the broker %s", tools, self.path)
                    await conn.wait_closed()
                log.info("the broker closed the connection; registering %s again", tools)
            except _Refused as refused:
                reason = str(refused.error)
                if reason not in refusals:
                    refusals.add(reason)
                    log.warning("the broker refused to register %s: %s", tools, reason)
                else:
                    log.debug("the broker refused to register %s again", tools)
            except (KikiError, OSError) as exc:
                log.debug("the broker %s is not reachable (%s)", self.path, exc)
            await asyncio.sleep(backoff.exited(time.monotonic()))


class _Refused(Exception):
    """The broker answered registration with an error (not a transport failure)."""

    def __init__(self, error: KikiError) -> None:
        super().__init__(str(error))
        self.error = error
