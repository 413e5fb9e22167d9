"""Method tables, the request context, and JSON-RPC's one exception-to-wire boundary.

Every handler is an ``async def`` whose first parameter is the :class:`RequestContext`; the rest
are the request's params, by position (array) or by name (object), bound the way jsonrpcserver
binds them (a mismatch is -32601/-32602 from jsonrpcserver itself)::

    methods = Methods()

    @methods.method("tools/call")
    async def call_tool(ctx: RequestContext, name: str, arguments: dict[str, Any]) -> Any: ...

Whatever a handler raises goes through :func:`_guard`, the only place where exceptions become
wire errors: a :class:`~libkiki.errors.KikiError` becomes its own code, message and data;
anything else is logged with its traceback and answered ``-32603 Internal error`` with no detail.
A result that cannot be serialised is an internal error too (the result is serialised here,
once, and embedded as an ``orjson.Fragment``).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

import orjson
from jsonrpcserver import Error, Success
from jsonrpcserver.async_dispatcher import dispatch_request
from jsonrpcserver.dispatcher import create_request, to_response
from jsonrpcserver.response import to_serializable_one

from libkiki.errors import INTERNAL_ERROR, KikiError
from libkiki.peer import PeerCred
from libkiki.rpc.messages import PROGRESS, RequestId

if TYPE_CHECKING:
    from libkiki.rpc.connection import Connection

__all__ = ["Handler", "Methods", "RequestContext", "dispatch"]

log = logging.getLogger(__name__)

Handler = Callable[..., Awaitable[Any]]
H = TypeVar("H", bound=Handler)


@dataclass(frozen=True, slots=True)
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
        return dump(mode="json", by_alias=True, exclude_none=True)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


_INTERNAL = (INTERNAL_ERROR["code"], INTERNAL_ERROR["message"])


def _guard(name: str, func: Handler) -> Callable[..., Awaitable[Any]]:
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            result = await func(*args, **kwargs)
            return Success(orjson.Fragment(orjson.dumps(result, default=_default)))
        except KikiError as exc:
            member = exc.to_jsonrpc()
            if "data" not in member:
                return Error(member["code"], member["message"])
            try:
                data = orjson.Fragment(orjson.dumps(member["data"], default=_default))
            except TypeError:
                log.exception("JSON-RPC method %s raised an error with unserialisable data", name)
                return Error(*_INTERNAL)
            return Error(member["code"], member["message"], data)
        except Exception:
            log.exception("JSON-RPC method %s failed", name)
            return Error(*_INTERNAL)

    # jsonrpcserver checks params against the signature on every call; giving it the handler's
    # own signature, computed once, keeps -32602 right and saves the inspect work per call.
    guarded.__signature__ = inspect.signature(func)  # type: ignore[attr-defined]
    guarded.__name__ = getattr(func, "__name__", name)
    return guarded


class Methods:
    """A mutable table of JSON-RPC methods, name -> ``async def handler(ctx, ...)``."""

    def __init__(self, table: Mapping[str, Handler] | None = None) -> None:
        self._handlers: dict[str, Handler] = {}
        self._guarded: dict[str, Callable[..., Awaitable[Any]]] = {}
        for name, func in (table or {}).items():
            self.register(name, func)

    def register(self, name: str, func: Handler) -> None:
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"the handler for {name!r} must be an async function")
        self._handlers[name] = func
        self._guarded[name] = _guard(name, func)

    def unregister(self, name: str) -> None:
        self._handlers.pop(name, None)
        self._guarded.pop(name, None)

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
    """Run one already-validated request through jsonrpcserver; the response dict, or None.

    The core has parsed (orjson) and validated (the fast check) the message and split any batch,
    so this enters jsonrpcserver below its deserialize/validate/gather stages: method lookup
    (-32601), params binding (-32602) and the call are its own.
    """
    request = create_request(message)
    _, result = await dispatch_request(methods._guarded, ctx, request)
    if ctx.notification:
        return None
    return cast(dict[str, Any], to_serializable_one(to_response(request, result)))
