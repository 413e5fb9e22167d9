"""The event streams' provider side, on the providers' connections: each upstream the fan-out
(:class:`~kiki_tool_broker.streams.StreamFanout`) opens or closes at a provider, and what the
providers send back.

* ``kiki/openStream`` requests and ``kiki/closeStream`` / ``kiki/rejected`` notifications to a
  provider. What cannot be written at once waits in a bounded per-provider backlog: an open not
  yet written is dropped, not cancelled, when its topic closes, and a provider whose backlog
  passes :data:`MAX_PROVIDER_BACKLOG` items or :data:`MAX_PROVIDER_BUFFER` unsent bytes is
  disconnected (its subscribers wait for a provider, as when one leaves). An ``openStream``
  that fails (an error answer, no answer in time) is followed by ``kiki/closeStream``, in case
  the provider started it all the same; one cancelled before it was answered (its topic closed)
  is cancelled at the provider (``notifications/cancelled``) and closed as well.
* ``kiki/emit`` and ``kiki/endStream`` from a provider. The ``stream`` number a provider is
  given is a random 53-bit capability, not the fan-out's upstream id: emits are handled as they
  are read (no task each, see :meth:`libkiki.rpc.Methods.inline`), where the sending connection
  is not known, so only the provider the number was given to can use it.

The broker's own streams have no connection: :mod:`kiki_tool_broker.events` serves them in
process and hands only other providers' upstreams here.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

from kiki_tool_broker.registry import Provider
from kiki_tool_broker.streams import Action, CloseUpstream, OpenUpstream, Rejected, StreamFanout
from libkiki.errors import KikiError, PeerGone
from libkiki.rpc import Connection

if TYPE_CHECKING:
    from kiki_tool_broker.core import BrokerCore

log = logging.getLogger(__name__)

OPEN_STREAM: Final = "kiki/openStream"
CLOSE_STREAM: Final = "kiki/closeStream"
EMIT: Final = "kiki/emit"
END_STREAM: Final = "kiki/endStream"
REJECTED: Final = "kiki/rejected"

# A provider that stops reading: what waits to be written to it, in items of our own backlog
# (openStream / closeStream not written yet) and bytes in its transport. Past either it is
# disconnected (its subscribers wait for a provider, as when it leaves).
MAX_PROVIDER_BACKLOG: Final = 1024
MAX_PROVIDER_BUFFER: Final = 1 << 20

Carry = Callable[[Iterable[Action]], None]


class _Backlog:
    """What waits to be written to one provider: openStreams (by upstream) and closeStreams
    (by token), each at most once, written by one task when the transport takes them."""

    __slots__ = ("closes", "conn", "opens", "task")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.opens: dict[int, dict[str, Any]] = {}  # upstream -> openStream params
        self.closes: dict[int, None] = {}  # tokens
        self.task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self.opens) + len(self.closes)


class Upstreams:
    """Upstreams at connected providers (see the module's docstring). ``carry`` carries out
    what the fan-out answers to what a provider did (its subscribers told, audited)."""

    def __init__(self, core: BrokerCore, carry: Carry, counters: Any) -> None:
        self.providers = core.stream_providers
        self.config = core.config
        self.fanout: StreamFanout = core.streams
        self.carry = carry
        self.counters = counters
        # A provider's stream number (capability) -> (upstream, provider id), and back.
        self.tokens: dict[int, tuple[int, int]] = {}
        self.token_of: dict[int, int] = {}
        self.opening: dict[int, asyncio.Future[Any]] = {}  # upstream -> its openStream answer
        self.backlogs: dict[int, _Backlog] = {}  # provider id -> what waits to be written
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- from providers ----------------------------------------------------------------------

    def emit(self, params: Any) -> None:
        found = self._upstream(params)
        if found is not None:
            upstream, provider = found
            self.carry(self.fanout.publish(provider, upstream, params.get("message")))

    def end_stream(self, params: Any) -> None:
        found = self._upstream(params)
        if found is not None:
            upstream, _ = found
            message = params.get("message")
            self.forget(upstream)
            self.carry(
                self.fanout.upstream_ended(upstream, None if message is None else str(message))
            )

    def _upstream(self, params: Any) -> tuple[int, int] | None:
        token = params.get("stream") if isinstance(params, dict) else None
        found = self.tokens.get(token) if isinstance(token, int) else None
        if found is None:
            self.counters["stream_stale_tokens"] += 1
        return found

    def provider_gone(self, provider: Provider) -> None:
        """Its connection closed: its backlog, tokens and openings go (the fan-out makes its
        topics wait)."""
        backlog = self.backlogs.pop(provider.id, None)
        if backlog is not None and backlog.task is not None:
            backlog.task.cancel()
        for token, (upstream, pid) in list(self.tokens.items()):
            if pid == provider.id:
                self.forget(upstream)
                self.tokens.pop(token, None)

    def forget(self, upstream: int) -> None:
        token = self.token_of.pop(upstream, None)
        if token is not None:
            self.tokens.pop(token, None)
        opening = self.opening.pop(upstream, None)
        if opening is not None:
            opening.cancel()  # tells the provider (notifications/cancelled)

    # -- to providers ------------------------------------------------------------------------

    def open(self, action: OpenUpstream) -> None:
        provider = self.providers.get(action.provider)
        if provider is None or provider.connection is None or provider.connection.closed:
            return  # its connection has closed: provider_gone makes the topic wait
        token = secrets.randbits(53) or 1
        while token in self.tokens:
            token = secrets.randbits(53) or 1
        self.tokens[token] = (action.upstream, action.provider)
        self.token_of[action.upstream] = token
        params = {"stream": token, "nsid": action.nsid, "params": action.params}
        backlog = self.backlogs.get(action.provider)
        if backlog is not None and backlog.opens:  # in order, behind those waiting already
            backlog.opens[action.upstream] = params
            self._check_backlog(backlog)
        elif not self._send_open(provider.connection, action.upstream, params, queue=True):
            backlog = self._backlog(provider)
            backlog.opens[action.upstream] = params
            self._check_backlog(backlog)

    def close(self, action: CloseUpstream) -> None:
        token = self.token_of.get(action.upstream)
        backlog = self.backlogs.get(action.provider)
        unsent = backlog is not None and backlog.opens.pop(action.upstream, None) is not None
        self.forget(action.upstream)
        if token is not None and not unsent:  # an open never written needs no close
            self._queue_close(action.provider, token)

    def rejected(self, action: Rejected) -> None:
        token = self.token_of.get(action.upstream)
        provider = self.providers.get(action.provider)
        if token is None or provider is None or provider.connection is None:
            return
        error = action.error.to_jsonrpc()
        conn: Connection = provider.connection
        # A provider flooding bad messages is told of them while it reads what it is told.
        if not conn.try_notify(REJECTED, {"stream": token, "error": error}):
            self.counters["stream_rejected_untold"] += 1

    def _send_open(
        self, conn: Connection, upstream: int, params: dict[str, Any], *, queue: bool
    ) -> bool:
        """Write an openStream now; False when the provider is not taking what we write (and
        ``queue``): it is then the backlog's to write."""
        timeout = self.config.call_timeout
        try:
            fut = conn.request_soon(OPEN_STREAM, params, timeout=timeout)
        except KikiError:
            return True  # closed: provider_gone follows
        if fut is None:
            if queue and conn.write_buffer_size:
                return False
            # Every in-flight slot is taken: one task waits for one (bounded by upstreams).
            fut = asyncio.ensure_future(conn.request(OPEN_STREAM, params, timeout=timeout))
        self.opening[upstream] = fut
        fut.add_done_callback(functools.partial(self._opened, upstream))
        return True

    def _opened(self, upstream: int, fut: asyncio.Future[Any]) -> None:
        if self.opening.get(upstream) is fut:
            del self.opening[upstream]
        if fut.cancelled():
            return  # closed before it was answered
        error = fut.exception()
        if error is None:
            self.carry(self.fanout.upstream_opened(upstream))
        elif not isinstance(error, PeerGone) and upstream in self.token_of:
            # The provider may have started it all the same (it timed out): it is told to stop.
            found = self.tokens.get(self.token_of[upstream])
            token = self.token_of[upstream]
            self.forget(upstream)
            if found is not None:
                self._queue_close(found[1], token)
            detail = error.message if isinstance(error, KikiError) else str(error)
            self.carry(self.fanout.upstream_failed(upstream, detail))

    def _queue_close(self, pid: int, token: int) -> None:
        provider = self.providers.get(pid)
        if provider is None or provider.connection is None or provider.connection.closed:
            return
        backlog = self.backlogs.get(pid)
        if (backlog is None or not backlog) and provider.connection.try_notify(
            CLOSE_STREAM, {"stream": token}
        ):
            return
        backlog = self._backlog(provider)
        backlog.closes[token] = None
        self._check_backlog(backlog)

    # -- the backlog of a provider that does not read ----------------------------------------

    def _backlog(self, provider: Provider) -> _Backlog:
        backlog = self.backlogs.get(provider.id)
        if backlog is None:
            assert provider.connection is not None
            backlog = self.backlogs[provider.id] = _Backlog(provider.connection)
        if backlog.task is None or backlog.task.done():
            backlog.task = asyncio.get_running_loop().create_task(self._flush(backlog))
        return backlog

    def _check_backlog(self, backlog: _Backlog) -> None:
        conn = backlog.conn
        if len(backlog) <= MAX_PROVIDER_BACKLOG and conn.write_buffer_size <= MAX_PROVIDER_BUFFER:
            return
        if conn.closed or conn.state.get("stream_dropped"):
            return
        conn.state["stream_dropped"] = True
        self.counters["stream_providers_dropped"] += 1
        log.warning(
            "%s: disconnected: it does not read what it is sent (%d stream messages waiting, "
            "%d bytes unsent)",
            conn.name,
            len(backlog),
            conn.write_buffer_size,
        )
        task = asyncio.get_running_loop().create_task(conn.close())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self, backlog: _Backlog) -> None:
        """Write a provider's backlog as the provider reads: closes first (they free it)."""
        conn = backlog.conn
        try:
            while backlog:
                closes = [(CLOSE_STREAM, {"stream": t}) for t in backlog.closes]
                backlog.closes.clear()
                await conn.notify_many(closes)  # also waits while the transport is paused
                while backlog.opens and not backlog.closes:
                    upstream = next(iter(backlog.opens))
                    params = backlog.opens.pop(upstream)
                    if not self._send_open(conn, upstream, params, queue=False):
                        break
                    if conn.write_buffer_size:
                        await conn.notify_many([])
        except KikiError:
            return  # closed: provider_gone clears it
