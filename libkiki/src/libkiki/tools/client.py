"""The agent's side: :class:`ToolClient`, an MCP client of the tool broker.

::

    async with ToolClient() as tools:
        for tool in await tools.list():
            print(tool["name"])
        now = await tools.call("dev.kiki.media.nowPlaying")

An event stream (a lexicon ``subscription`` type) is iterated (:mod:`libkiki.streams_client`)::

    async with tools.subscribe("dev.kiki.media.subscribePlayback") as stream:
        async for message in stream.messages():
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import ModuleType
from typing import Any, TypeVar, overload

import pydantic

from libkiki.errors import KikiError, PeerGone, ProtocolError, ToolError
from libkiki.framing import DEFAULT_MAX_LINE
from libkiki.rpc import Connection, Methods, ProgressCallback, RequestContext, connect_unix
from libkiki.rpc.connection import DEFAULT_MAX_IN_FLIGHT
from libkiki.streams_client import DEFAULT_MAX_QUEUE, StreamRouter, Subscription
from libkiki.tools.wire import (
    CLIENT_INFO,
    ERROR_DATA_META,
    HANDSHAKE_VERSION,
    IDEMPOTENCY_KEY_META,
    ON_BEHALF_OF_META,
    broker_socket,
)

M = TypeVar("M")


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
        self.path = broker_socket(path)
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
