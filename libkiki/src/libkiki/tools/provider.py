"""The app's side: :class:`ToolProvider` serves decorated functions as tools on the tool broker.

Decorate a function with the NSID of its lexicon; its input and output may be pydantic models
(the generated bindings) or plain dicts::

    provider = ToolProvider(lexicons=[my_lexicon_json])

    @provider.tool("org.example.echo")
    async def echo(args: EchoInput, call: ToolCall) -> EchoOutput:
        return EchoOutput(text=args.text)

    async with provider.connect():
        await provider.serve_forever()

A service that must stay registered across broker restarts runs
``await provider.keep_registered()`` instead (until cancelled).

An event stream (a lexicon ``subscription`` type) is served as an async generator
(:mod:`libkiki.streams_provider`)::

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
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, get_type_hints

import pydantic

from libkiki.backoff import RestartBackoff
from libkiki.errors import InvalidParams, KikiError, NotFound
from libkiki.framing import DEFAULT_MAX_LINE
from libkiki.peer import PeerCred
from libkiki.rpc import Connection, Methods, RequestContext, connect_unix
from libkiki.rpc.connection import DEFAULT_MAX_IN_FLIGHT
from libkiki.streams_provider import ProvidedStreams, StreamFunc
from libkiki.tools.wire import CALLER_META, broker_socket

# The package's name, not this module's: log configurations and filters name ``libkiki.tools``.
log = logging.getLogger("libkiki.tools")


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
        self.path = broker_socket(path)
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
            base = _loaded_base_model()
            model = (
                first
                if base is not None and isinstance(first, type) and issubclass(first, base)
                else None
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
            base = _loaded_base_model()
            if base is not None and isinstance(output, base):
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


def _loaded_base_model() -> type[pydantic.BaseModel] | None:
    """``pydantic.BaseModel`` if pydantic.main is loaded, else None: no model class (nor an
    instance of one) can exist before it is. Naming ``pydantic.BaseModel`` would load it (one
    of pydantic's lazy attributes: tens of ms and about 1.4 MB, on a provider's first call),
    so a provider of plain dicts asks here instead."""
    models = sys.modules.get("pydantic.main")
    return None if models is None else models.BaseModel


class _Refused(Exception):
    """The broker answered registration with an error (not a transport failure)."""

    def __init__(self, error: KikiError) -> None:
        super().__init__(str(error))
        self.error = error
