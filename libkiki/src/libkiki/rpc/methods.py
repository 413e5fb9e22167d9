"""Method tables, the request context, and JSON-RPC's one exception-to-wire boundary.

Every handler is an ``async def`` whose first parameter is the :class:`RequestContext`; the rest
are the request's params, by position (array) or by name (object), bound the way jsonrpcserver
binds them (a mismatch is -32601/-32602 from jsonrpcserver itself)::

    methods = Methods()

    @methods.method("tools/call")
    async def call_tool(ctx: RequestContext, name: str, arguments: dict[str, Any]) -> Any: ...

A handler that never waits may be a plain function registered with :meth:`Methods.register_sync`
(or ``@methods.sync("name")``): the connection runs it as the request is read, with no task of its
own, and answers it there. When such a handler does have to wait after all, it returns an
awaitable, and only that rest runs in a task; an :class:`asyncio.Future` needs no task at all:
the connection answers once it is done, and a :class:`~libkiki.rpc.later.Reply` (the broker
forwarding a call) is answered in the very turn of the event loop that settles it.

Whatever a handler raises goes through :func:`_failure`, the only place where exceptions become
wire errors: a :class:`~libkiki.errors.KikiError` becomes its own code, message and data;
anything else is logged with its traceback and answered ``-32603 Internal error`` with no detail.
A result that cannot be serialised is an internal error too (the result is serialised here,
once, and embedded as an ``orjson.Fragment``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

import orjson

from libkiki.errors import INTERNAL_ERROR, KikiError
from libkiki.peer import PeerCred
from libkiki.rpc.later import Reply
from libkiki.rpc.messages import PROGRESS, RequestId

if TYPE_CHECKING:
    from libkiki.rpc.connection import Connection

__all__ = [
    "Handler",
    "Methods",
    "RequestContext",
    "SyncHandler",
    "dispatch",
    "dispatch_now",
    "finish",
    "settled",
]

log = logging.getLogger(__name__)

Handler = Callable[..., Awaitable[Any]]
SyncHandler = Callable[..., Any]  # returns the result, or an awaitable of it
H = TypeVar("H", bound=Handler)
S = TypeVar("S", bound=SyncHandler)


# Not frozen (handlers must not change it all the same): one is made for every request, and a
# frozen dataclass sets each field through object.__setattr__, several times the cost of a
# plain one. eq=False keeps it hashable by identity, as a request's own.
@dataclass(slots=True, eq=False)
class RequestContext:
    """What a handler knows about the call it serves. ``peer`` is the kernel's word, not the
    payload's; ``meta`` is the request's ``params._meta`` (MCP), removed from the params."""

    connection: Connection
    peer: PeerCred
    method: str
    request_id: RequestId
    notification: bool
    meta: dict[str, Any] | None = None
    progress_token: str | int | None = None

    async def progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Send ``notifications/progress`` if the caller asked for it (a no-op otherwise)."""
        if self.progress_token is None:
            return
        params: dict[str, Any] = {"progressToken": self.progress_token, "progress": progress}
        if total is not None:
            params["total"] = total
        if message is not None:
            params["message"] = message
        await self.connection.notify(PROGRESS, params)


def _default(obj: Any) -> Any:
    # Pydantic models (the generated lexicon bindings) serialise themselves.
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        return dump(mode="json", by_alias=True)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


_INTERNAL = (INTERNAL_ERROR["code"], INTERNAL_ERROR["message"])

# What a guarded call gives back: (True, serialised result) or (False, the error member).
Outcome = tuple[bool, Any]


def _success(result: Any) -> Outcome:
    return True, orjson.Fragment(orjson.dumps(result, default=_default))


def _failure(name: str, exc: Exception) -> Outcome:
    """The one place where a handler's exception becomes a wire error."""
    if isinstance(exc, KikiError):
        member = exc.to_jsonrpc()
        if "data" in member:
            try:
                member["data"] = orjson.Fragment(orjson.dumps(member["data"], default=_default))
            except TypeError:
                log.exception("JSON-RPC method %s raised an error with unserialisable data", name)
                return False, dict(INTERNAL_ERROR)
        return False, member
    log.error("JSON-RPC method %s failed", name, exc_info=exc)
    return False, dict(INTERNAL_ERROR)


async def _outcome(
    name: str, func: Handler, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Outcome:
    """Run ``func`` and settle its result or exception."""
    try:
        return _success(await func(*args, **kwargs))
    except Exception as exc:
        return _failure(name, exc)


async def finish(name: str, id: RequestId, pending: Awaitable[Any]) -> dict[str, Any]:
    """Await the rest of a synchronous handler (see :func:`dispatch_now`): its response."""
    try:
        ok, value = _success(await pending)
    except Exception as exc:
        ok, value = _failure(name, exc)
    return _response(id, ok, value)


def settled(name: str, id: RequestId, done: asyncio.Future[Any] | Reply) -> dict[str, Any]:
    """The response for a synchronous handler's rest that needs no task, once it is done (and
    not cancelled): a future (:func:`finish` without the wait) or a
    :class:`~libkiki.rpc.later.Reply`; what the handler would have returned or raised."""
    if isinstance(done, Reply):
        ok, value = done.outcome()
    else:
        error = done.exception()
        ok, value = (True, done.result()) if error is None else (False, error)
    if not ok:
        return _response(id, *_failure(name, value))
    try:
        return _response(id, *_success(value))
    except Exception as exc:
        return _response(id, *_failure(name, exc))


async def _wait(reply: Reply) -> Any:
    """A :class:`~libkiki.rpc.later.Reply` on the task path: its result, or its error raised;
    cancelling the wait cancels the reply."""
    try:
        await reply.waiter(asyncio.get_running_loop())
    except asyncio.CancelledError:
        reply.cancel()
        raise
    if reply.cancelled():
        raise asyncio.CancelledError
    ok, value = reply.outcome()
    if not ok:
        raise value
    return value


def _response(id: RequestId, ok: bool, value: Any) -> dict[str, Any]:
    if ok:
        return {"jsonrpc": "2.0", "result": value, "id": id}
    return {"jsonrpc": "2.0", "error": value, "id": id}


def _as_async(func: SyncHandler) -> Handler:
    """A synchronous handler as the task path runs it (notifications, binding errors)."""

    @functools.wraps(func)
    async def run(*args: Any, **kwargs: Any) -> Any:
        result = func(*args, **kwargs)
        if isinstance(result, Reply):
            return await _wait(result)
        if inspect.isawaitable(result):
            result = await result
        return result

    return run


def _guard(name: str, func: Handler) -> Callable[..., Awaitable[Any]]:
    """``func`` as jsonrpcserver wants it: returning its ``Success``/``Error``."""

    async def guarded(*args: Any, **kwargs: Any) -> Any:
        from jsonrpcserver import Error, Success

        ok, value = await _outcome(name, func, args, kwargs)
        if ok:
            return Success(value)
        if "data" in value:
            return Error(value["code"], value["message"], value["data"])
        return Error(value["code"], value["message"])

    # jsonrpcserver checks params against the signature on every call; giving it the handler's
    # own signature, computed once, keeps -32602 right and saves the inspect work per call.
    guarded.__signature__ = inspect.signature(func)  # type: ignore[attr-defined]
    guarded.__name__ = getattr(func, "__name__", name)
    return guarded


@dataclass(frozen=True, slots=True)
class _Shape:
    """The handler's parameters after the context, when they are all plain (positional or
    keyword): enough to tell, without ``inspect``, that given params certainly bind."""

    names: frozenset[str]
    required: frozenset[str]
    total: int
    minimum: int
    any_keyword: bool  # a ``**kwargs`` parameter

    @classmethod
    def of(cls, func: Handler) -> _Shape | None:
        params = list(inspect.signature(func).parameters.values())[1:]
        plain = [p for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        var_kw = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
        if len(plain) + len(var_kw) != len(params):
            return None  # positional-only, keyword-only or *args: leave it to jsonrpcserver
        required = [p.name for p in plain if p.default is inspect.Parameter.empty]
        if [p.name for p in plain[: len(required)]] != required:
            return None
        return cls(
            frozenset(p.name for p in plain),
            frozenset(required),
            len(plain),
            len(required),
            bool(var_kw),
        )

    def binds(self, params: Any) -> bool:
        if isinstance(params, dict):
            return self.required.issubset(params) and (
                self.any_keyword or self.names.issuperset(params)
            )
        if isinstance(params, list):
            return self.minimum <= len(params) <= self.total
        return False


class Methods:
    """A mutable table of JSON-RPC methods, name -> ``async def handler(ctx, ...)``."""

    def __init__(self, table: Mapping[str, Handler] | None = None) -> None:
        self._handlers: dict[str, Handler] = {}
        self._guarded: dict[str, Callable[..., Awaitable[Any]]] = {}
        self._shapes: dict[str, _Shape | None] = {}
        self._inline: dict[str, Callable[[Any], None]] = {}
        self._sync: dict[str, SyncHandler] = {}
        for name, func in (table or {}).items():
            self.register(name, func)

    def register(self, name: str, func: Handler) -> None:
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"the handler for {name!r} must be an async function")
        self._add(name, func)
        self._sync.pop(name, None)

    def register_sync(self, name: str, func: SyncHandler) -> None:
        """A handler that answers as the request is read, without a task: a plain function
        ``handler(ctx, ...)`` that must not block. It returns the result, or an awaitable for
        the rest when it has to wait after all (run in a task then, like an async handler)."""
        if inspect.iscoroutinefunction(func):
            raise TypeError(f"the synchronous handler for {name!r} must be a plain function")
        self._add(name, _as_async(func))
        self._sync[name] = func

    def sync(self, name: str) -> Callable[[S], S]:
        """Decorator form of :meth:`register_sync`."""

        def decorator(func: S) -> S:
            self.register_sync(name, func)
            return func

        return decorator

    def _add(self, name: str, func: Handler) -> None:
        self._handlers[name] = func
        self._guarded[name] = _guard(name, func)
        self._shapes[name] = _Shape.of(func)

    def inline(self, name: str) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
        """Decorator for a *notification* handled as it is read, without a task of its own:
        a plain function of the notification's params, which must not block. For high-rate
        signals (a sensor wake-up) where a task per message costs more than the work. A
        request (with an id) for such a method is answered -32601 like any unknown method."""

        def decorator(func: Callable[[Any], None]) -> Callable[[Any], None]:
            self._inline[name] = func
            return func

        return decorator

    def inline_handler(self, name: str) -> Callable[[Any], None] | None:
        """The handler of notification ``name`` if it is handled as read (:meth:`inline`)."""
        return self._inline.get(name)

    def sync_handler(self, name: str) -> SyncHandler | None:
        """The handler of ``name`` if it answers as read (:meth:`register_sync`)."""
        return self._sync.get(name)

    @property
    def has_sync(self) -> bool:
        """Whether any handler answers as read (:meth:`register_sync`)."""
        return bool(self._sync)

    def unregister(self, name: str) -> None:
        self._sync.pop(name, None)
        self._handlers.pop(name, None)
        self._guarded.pop(name, None)
        self._shapes.pop(name, None)

    @overload
    def method(self, func: H, /) -> H: ...
    @overload
    def method(self, name: str, /) -> Callable[[H], H]: ...

    def method(self, target: H | str, /) -> H | Callable[[H], H]:
        """Decorator: ``@methods.method`` (the function's name) or ``@methods.method("a/b")``."""
        if isinstance(target, str):
            name = target

            def decorator(func: H) -> H:
                self.register(name, func)
                return func

            return decorator
        self.register(target.__name__, target)
        return target

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def __iter__(self) -> Iterator[str]:
        return iter(self._handlers)

    def __len__(self) -> int:
        return len(self._handlers)

    def __getitem__(self, name: str) -> Handler:
        return self._handlers[name]

    @classmethod
    def of(cls, methods: Methods | Mapping[str, Handler] | None) -> Methods:
        return methods if isinstance(methods, Methods) else cls(methods)


async def dispatch(
    methods: Methods, ctx: RequestContext, message: dict[str, Any]
) -> dict[str, Any] | None:
    """Run one already-validated request; the response dict, or None for a notification.

    The core has parsed (orjson) and validated (the fast check) the message and split any batch.
    When the params certainly bind to the handler (plain parameters, names or count in range:
    :class:`_Shape`), the handler is called here directly. Anything else goes through
    jsonrpcserver below its deserialize/validate/gather stages, so that method lookup (-32601),
    params binding (-32602) and their error messages stay jsonrpcserver's own.
    """
    name = message["method"]
    shape = methods._shapes.get(name)
    params = message.get("params", [])
    if shape is not None and shape.binds(params):
        func = methods._handlers[name]
        if isinstance(params, dict):
            ok, value = await _outcome(name, func, (ctx,), params)
        else:
            ok, value = await _outcome(name, func, (ctx, *params), {})
        if ctx.notification:
            return None
        if ok:
            return {"jsonrpc": "2.0", "result": value, "id": message["id"]}
        return {"jsonrpc": "2.0", "error": value, "id": message["id"]}
    # Imported here, on the path that needs it: jsonrpcserver brings jsonschema, attrs and oslash,
    # more than the rest of a service's start, and a service whose calls all bind never uses it.
    from jsonrpcserver.async_dispatcher import dispatch_request
    from jsonrpcserver.dispatcher import create_request, to_response
    from jsonrpcserver.response import to_serializable_one

    request = create_request(message)
    _, result = await dispatch_request(methods._guarded, ctx, request)
    if ctx.notification:
        return None
    return cast(dict[str, Any], to_serializable_one(to_response(request, result)))


def dispatch_now(
    methods: Methods, ctx: RequestContext, message: dict[str, Any]
) -> dict[str, Any] | Awaitable[Any] | Reply | None:
    """Run a request for a synchronous handler right here, if it is one whose params certainly
    bind: its response dict, the :class:`~libkiki.rpc.later.Reply` it returned (answered with
    :func:`settled`), or the awaitable it returned (to be finished with :func:`finish`). None
    when the request is not for such a handler (nothing has run: use :func:`dispatch`)."""
    name = message["method"]
    func = methods._sync.get(name)
    if func is None or ctx.notification:
        return None
    params = message.get("params", [])
    shape = methods._shapes.get(name)
    if shape is None or not shape.binds(params):
        return None  # jsonrpcserver's binding errors, through dispatch
    try:
        result = func(ctx, **params) if isinstance(params, dict) else func(ctx, *params)
        if type(result) is not dict and (isinstance(result, Reply) or inspect.isawaitable(result)):
            return result
        ok, value = _success(result)
    except Exception as exc:
        ok, value = _failure(name, exc)
    if ok:
        return {"jsonrpc": "2.0", "result": value, "id": message["id"]}
    return {"jsonrpc": "2.0", "error": value, "id": message["id"]}
