"""Serving event streams to the broker as async generators, provider side.

A :class:`~libkiki.tools.ToolProvider` declares each decorated generator's NSID in its
registration (``subscriptions``), and those decorated ``private=True`` as private streams
(``privateSubscriptions``: streams of someone's own data, which the broker lets only root, the
provider's own user and those a policy rule names for the stream follow). For each
``kiki/openStream`` the broker sends (its first subscriber to that NSID and those params came),
the generator is started with the params and a :class:`StreamContext`:

* it runs at once up to its first wait; an exception raised before that (or params its first
  parameter's pydantic model refuses) refuses the stream, and the broker ends its subscribers
  with ``refused``; otherwise the stream is accepted;
* each value it yields is sent as ``kiki/emit`` (a pydantic model as its JSON); sending waits
  while the broker is not reading, so a generator never runs ahead of its connection;
* its end sends ``kiki/endStream``; an exception after the start ends it too, with the
  exception's message when it is a :class:`~libkiki.errors.KikiError` (logged, either way);
* ``kiki/closeStream`` (its last subscriber left) cancels it: its ``finally`` blocks run;
* ``kiki/rejected`` (a message that broke its lexicon or a size limit, dropped by the broker)
  is logged and counted in :attr:`ProvidedStreams.rejected`, by NSID.

One generator serves every subscriber of a (NSID, params): the broker fans it out.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, get_type_hints

import pydantic

from libkiki.errors import InvalidParams, KikiError, NotFound

if TYPE_CHECKING:
    from libkiki.rpc import Connection, Methods, RequestContext

__all__ = ["ProvidedStreams", "StreamContext", "StreamFunc"]

log = logging.getLogger(__name__)

OPEN = "kiki/openStream"
CLOSE = "kiki/closeStream"
REJECTED = "kiki/rejected"
EMIT = "kiki/emit"
END = "kiki/endStream"

StreamFunc = Callable[..., AsyncIterator[Any]]


@dataclass(frozen=True, slots=True)
class StreamContext:
    """What a stream's generator learns beyond its params: the broker's id for the upstream
    and the NSID (no caller: one upstream serves every subscriber, whom the broker admits)."""

    id: int
    nsid: str
    connection: Connection


@dataclass(frozen=True, slots=True)
class _Entry:
    func: StreamFunc
    params_model: type[pydantic.BaseModel] | None


def _dump(message: Any) -> Any:
    if isinstance(message, pydantic.BaseModel):
        return message.model_dump(mode="json", by_alias=True)
    return message


async def _send(conn: Connection, method: str, params: dict[str, Any]) -> bool:
    """Send a notification; False when the connection is gone (nobody to tell any more)."""
    try:
        await conn.notify(method, params)
    except KikiError as exc:
        log.debug("%s not sent: %s", method, exc)
        return False
    return True


class ProvidedStreams:
    """A provider's stream generators by NSID, and the ones running, by the broker's id."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._private: set[str] = set()
        self._running: dict[int, asyncio.Task[None]] = {}
        self._nsid_of: dict[int, str] = {}
        self.rejected: Counter[str] = Counter()

    @property
    def nsids(self) -> list[str]:
        return sorted(self._entries)

    @property
    def private_nsids(self) -> list[str]:
        """The NSIDs declared private (a subset of :attr:`nsids`)."""
        return sorted(self._private)

    @property
    def running(self) -> int:
        """Generators running now (one per upstream the broker has open here)."""
        return len(self._running)

    def add(self, nsid: str, func: StreamFunc, *, private: bool = False) -> None:
        if nsid in self._entries:
            raise ValueError(f"subscription {nsid}: this provider already has a generator for it")
        if not inspect.isasyncgenfunction(func):
            raise TypeError(
                f"subscription {nsid}: {getattr(func, '__name__', func)} must be an async "
                "generator function (async def with yield)"
            )
        try:
            hints = get_type_hints(func)
        except NameError as exc:
            raise TypeError(
                f"subscription {nsid}: cannot resolve the type hints of {func.__name__}: {exc}"
            ) from None
        params = list(inspect.signature(func).parameters)
        first = hints.get(params[0]) if params else None
        model = first if isinstance(first, type) and issubclass(first, pydantic.BaseModel) else None
        self._entries[nsid] = _Entry(func, model)
        if private:
            self._private.add(nsid)

    def install(self, methods: Methods) -> None:
        methods.register(OPEN, self._open)
        methods.register(CLOSE, self._close)
        methods.register(REJECTED, self._rejected)

    async def _open(
        self, ctx: RequestContext, stream: int, nsid: str, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        entry = self._entries.get(nsid)
        if entry is None:
            raise NotFound(f"this provider has no subscription {nsid}")
        if not isinstance(stream, int) or isinstance(stream, bool) or stream in self._running:
            raise InvalidParams(f"stream {stream!r} is not a new stream id")
        args: Any = params or {}
        if entry.params_model is not None:
            try:
                args = entry.params_model.model_validate(args)
            except pydantic.ValidationError as exc:
                raise InvalidParams(str(exc.errors()[0]["msg"])) from None
        agen = entry.func(args, StreamContext(stream, nsid, ctx.connection))
        accepted = asyncio.Event()
        task = asyncio.get_running_loop().create_task(
            self._pump(ctx.connection, stream, nsid, agen, accepted), name=f"{nsid} #{stream}"
        )
        self._running[stream] = task
        self._nsid_of[stream] = nsid
        task.add_done_callback(lambda t: self._forget(stream, t))
        # One turn of the loop: the task runs its first step now (tasks start in the order they
        # were made), i.e. the generator up to its first wait. What it raises there refuses.
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            # The broker gave up on this openStream (it timed out): the stream is not open.
            task.cancel()
            raise
        failure = task.exception() if task.done() and not task.cancelled() else None
        if failure is not None:
            if isinstance(failure, KikiError):
                raise failure
            log.error("%s: the stream's generator failed as it started", nsid, exc_info=failure)
            raise KikiError(f"{nsid}: the provider could not start the stream")
        accepted.set()
        return {}

    def _forget(self, stream: int, task: asyncio.Task[None]) -> None:
        if self._running.get(stream) is task:
            del self._running[stream]
            self._nsid_of.pop(stream, None)

    async def _pump(
        self,
        conn: Connection,
        stream: int,
        nsid: str,
        agen: AsyncIterator[Any],
        accepted: asyncio.Event,
    ) -> None:
        detail: str | None = None
        try:
            while True:
                try:
                    message = await anext(agen)
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    if not accepted.is_set():
                        raise  # before its first wait: _open refuses the stream with it
                    log.error("%s: the stream's generator failed", nsid, exc_info=exc)
                    detail = exc.message if isinstance(exc, KikiError) else f"{nsid} failed"
                    break
                # The first value may come before _open has answered: the answer goes first.
                await accepted.wait()
                if not await _send(conn, EMIT, {"stream": stream, "message": _dump(message)}):
                    return
            await accepted.wait()
            end: dict[str, Any] = {"stream": stream}
            if detail is not None:
                end["message"] = detail
            await _send(conn, END, end)
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def _close(self, ctx: RequestContext, stream: int) -> None:
        task = self._running.get(stream)
        if task is not None:
            task.cancel()

    async def _rejected(self, ctx: RequestContext, stream: int, error: Any = None) -> None:
        nsid = self._nsid_of.get(stream, "?")
        self.rejected[nsid] += 1
        # The first of a stream's rejections says why; the rest are counted (a generator
        # yielding a wrong shape would otherwise fill the log at its rate).
        level = logging.WARNING if self.rejected[nsid] == 1 else logging.DEBUG
        log.log(level, "%s: the broker rejected a message of stream %s: %s", nsid, stream, error)

    async def stop(self) -> None:
        """Cancel every running generator and wait for them (the connection is over)."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
