"""A symmetric JSON-RPC 2.0 connection over a connected stream socket, one JSON text per line.

Both ends serve a method table and send requests, notifications and batches. The protocol is in
:mod:`libkiki.rpc.protocol`; this layer only moves bytes and runs tasks, all owned by a
connection and none of which outlives the ``async with Connection(sock, ...)`` block.

Bytes move through an :class:`asyncio.Protocol`, not streams: input is decoded and dispatched in
``data_received`` itself (responses complete their futures, requests get their task) and output
goes straight to the transport, which saves a task wake-up per message each way.

Behaviour worth knowing:

* Incoming requests run concurrently, each in its own task. Over ``max_in_flight`` a request is
  answered ``LimitExceeded`` at once; notifications have a limit of the same size of their
  own, over which one is dropped. ``notifications/cancelled``
  cancels the handler's task and its response is never sent (MCP). A synchronous handler (see
  :mod:`libkiki.rpc.methods`) is answered as it is read; one that returns an
  :class:`asyncio.Future` is answered when the future is done, without a task (cancelling the
  request cancels the future); one that returns a :class:`~libkiki.rpc.later.Reply` is answered
  as the reply is settled, in that same turn of the event loop.
* Outgoing requests over ``max_in_flight`` *wait* for a slot; the wait counts toward the
  request's timeout, so a stalled peer surfaces as :class:`~libkiki.errors.Timeout`. On timeout
  or cancellation of the caller, the peer is sent ``notifications/cancelled`` (MCP's form).
  :meth:`Connection.request_soon` sends one without a task, as a future, when it need not wait;
  :meth:`Connection.request_now` likewise, with a callback called as the answer is read.
* Writes go straight to the transport; while its buffer is over the high-water mark, writers
  wait and the connection stops reading. An answer counts against the in-flight limit until it
  is written, so a peer that stops reading stops our handlers and then our reading instead of
  growing our memory.
* MCP progress callbacks run in order in one task per connection, through a bounded queue;
  past the bound a progress notification is dropped (it is advisory) and logged. A request
  returns only after the callbacks queued for it have run.
* End of input is the peer leaving: pending requests fail at once with
  :class:`~libkiki.errors.PeerGone` and running handlers are cancelled. A peer that half-closes
  to wait for its answers is therefore not supported.
* A connection runs on a socket (``Connection(sock, ...)``) or on any transport the caller
  makes (``Connection(transport=factory, ...)``): ``factory(protocol)`` is called in
  ``__aenter__`` with the connection's :class:`asyncio.BufferedProtocol` and returns a transport
  that reads into it (e.g. a pair of pipes). Everything above the transport is the same.
* :meth:`Connection.pause_reading` and :meth:`Connection.resume_reading` hold the peer's input
  in the kernel, apart from the pauses the write buffer makes; while paused,
  :meth:`Connection.receive_fds` reads descriptors the peer passes (``SCM_RIGHTS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from libkiki.errors import (
    INTERNAL_ERROR,
    KikiError,
    LimitExceeded,
    PeerGone,
    Timeout,
    Unavailable,
)
from libkiki.framing import DEFAULT_MAX_LINE, LineDecoder
from libkiki.peer import PeerCred
from libkiki.rpc.fds import receive_fds
from libkiki.rpc.later import Done, Reply, Sent, input_ends, input_starts
from libkiki.rpc.limits import Slots
from libkiki.rpc.messages import (
    CANCELLED,
    Call,
    CancelRequested,
    Dropped,
    Event,
    Incoming,
    Params,
    ProgressReceived,
    ResponseReceived,
    Send,
    UnmatchedResponse,
    error_response,
)
from libkiki.rpc.methods import (
    Handler,
    Methods,
    RequestContext,
    dispatch,
    dispatch_now,
    finish,
    settled,
)
from libkiki.rpc.protocol import RpcCore

__all__ = ["Connection", "ProgressCallback", "TransportFactory"]

log = logging.getLogger(__name__)

ProgressCallback = Callable[[dict[str, Any]], Awaitable[None]]
# Makes the transport of a Connection not on a socket, given the protocol it is to feed.
TransportFactory = Callable[[asyncio.BufferedProtocol], asyncio.Transport]
# A callback and its params, or None and a marker future (see Connection._progress_done).
_ProgressItem = tuple[ProgressCallback, dict[str, Any]] | tuple[None, asyncio.Future[None]]

DEFAULT_MAX_IN_FLIGHT = 64
DEFAULT_REQUEST_TIMEOUT = 30.0
_PROGRESS_QUEUE = 256  # progress notifications waiting for their callback
_CLOSE_BOUND = 2.0  # seconds granted to cancelled handlers and to flushing at close
_READ_SIZE = 64 * 1024  # bytes taken from the socket per read


def _no_answer(method: str, limit: float) -> Timeout:
    """What a request that got no answer within its timeout fails with."""
    return Timeout(
        f"no answer to {method} within {limit} s", data={"method": method, "timeout": limit}
    )


class _Wire(asyncio.BufferedProtocol):
    """The transport's view of a :class:`Connection`: forwards every callback to it.

    Buffered, so that the transport reads into one buffer of ours: a plain Protocol gets a fresh
    ``recv(256 KiB)`` bytes object per read, which glibc serves with mmap/mremap/munmap (about
    13 µs a read, more than the rest of reading a request).
    """

    __slots__ = ("_buffer", "_conn", "_view")

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._buffer = bytearray(_READ_SIZE)
        self._view = memoryview(self._buffer)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._conn._transport = transport
        if self._conn._reading_held:
            transport.pause_reading()  # paused before there was a transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        # The decoder keeps what it needs, so the buffer is free again when this returns.
        self._conn._received(bytes(self._view[:nbytes]))

    def eof_received(self) -> bool:
        self._conn._eof()
        return False  # close our side too: see "End of input" in the module docstring

    def connection_lost(self, exc: Exception | None) -> None:
        self._conn._connection_lost(exc)

    def pause_writing(self) -> None:
        self._conn._pause()

    def resume_writing(self) -> None:
        self._conn._resume()


class _Deadline:
    """What ``asyncio.timeout`` does for :meth:`Connection.request`, at half its cost: a
    timer that cancels the task, and the bookkeeping that tells that cancellation from any
    other. (On 3.11 ``asyncio.timeout`` also looks the loop up twice, a ``getpid()`` each.)"""

    __slots__ = ("_cancelling", "_handle", "_settled", "_task", "expired")

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: float | None) -> None:
        self.expired = False
        self._settled = False
        self._handle: asyncio.TimerHandle | None = None
        if limit is None:
            return
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("a request with a timeout must be made inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._handle = loop.call_at(loop.time() + limit, self._expire)

    def _expire(self) -> None:
        self._handle = None
        self.expired = True
        self._task.cancel()

    def caused_cancellation(self) -> bool:
        """After a CancelledError: whether it is ours, with no other cancellation pending."""
        if not self.expired or self._settled:
            return False
        self._settled = True
        return self._task.uncancel() <= self._cancelling

    def end(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        elif self.expired and not self._settled:
            self._settled = True
            self._task.uncancel()  # expired as the request ended some other way


class Connection:
    """One JSON-RPC peer. Use as ``async with Connection(sock, peer=...) as conn``.

    ``sock`` is a connected stream socket; the connection owns it from then on. Or, instead of
    ``sock``, ``transport``: a :data:`TransportFactory`, called once in ``__aenter__`` with the
    protocol to feed. It returns a transport that calls ``protocol.connection_made`` (as
    asyncio's do; if it has not by then, the connection calls it) and owns whatever it reads
    and writes; if the factory raises, cleaning up is its own job.
    """

    def __init__(
        self,
        sock: socket.socket | None = None,
        *,
        transport: TransportFactory | None = None,
        peer: PeerCred,
        methods: Methods | Mapping[str, Handler] | None = None,
        max_line: int = DEFAULT_MAX_LINE,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        counters: Counter[str] | None = None,
        name: str = "",
    ) -> None:
        self.peer = peer
        self.methods = Methods.of(methods)
        self.name = name or peer.describe()
        self.state: dict[str, Any] = {}  # free for the application (e.g. a provider's tools)
        self.request_timeout = request_timeout
        if (sock is None) == (transport is None):
            raise TypeError("a Connection takes a socket or a transport factory, not both")
        self._sock = sock
        self._make_transport = transport
        self._transport: asyncio.Transport | None = None
        self._reading_held = 0  # pause_reading calls not yet resumed
        # The loop, looked up once: on 3.11 every get_running_loop() is a getpid() system call.
        self._loop = asyncio.get_running_loop()
        self._paused: asyncio.Future[None] | None = None  # set while the transport is full
        self._lost_waiter = asyncio.Event()  # connection_lost has run
        self._progress_queue: asyncio.Queue[_ProgressItem] = asyncio.Queue(_PROGRESS_QUEUE)
        self._progressed: set[int] = set()  # requests with progress queued, for _progress_done
        self._progress_task: asyncio.Task[None] | None = None
        self._decoder = LineDecoder(max_line)
        # Nothing is sent that a peer with the default limit would drop (unless our own limit
        # is larger: then the peers are taken to be configured alike).
        sendable = max(max_line, DEFAULT_MAX_LINE)
        self._core = RpcCore(max_in_flight=max_in_flight, counters=counters, max_line=sendable)
        self._outgoing = Slots(max_in_flight)
        self._futures: dict[int, asyncio.Future[Any]] = {}
        self._sent: dict[int, Sent] = {}  # our requests answered through a callback (request_now)
        self._progress: dict[int, ProgressCallback] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._out: list[bytes] | None = None  # answers made while reading a chunk
        self._answered: list[int] = []  # slots answered while reading a chunk
        self._unreleased: list[int] = []  # answered as read, still in the transport's buffer
        self._rests: dict[int, Awaitable[Any]] = {}  # synchronous handlers' rests, not started
        # Synchronous handlers' answers still to come, futures or Replies, by slot.
        self._later: dict[int, asyncio.Future[Any] | Reply] = {}
        self._gone: KikiError | None = None  # why the connection ended; copied, never re-raised
        self._parting: KikiError | None = None  # a refusal the peer sent before it left
        self._closed = asyncio.Event()
        self._closing_started = asyncio.Event()
        self._finished = asyncio.Event()
        self._closing = False

    @property
    def counters(self) -> Counter[str]:
        return self._core.counters

    @property
    def closed(self) -> bool:
        return self._gone is not None

    @property
    def write_buffer_size(self) -> int:
        """Bytes written but not yet taken by the kernel (bounded by the high-water mark)."""
        return 0 if self._transport is None else self._transport.get_write_buffer_size()

    @property
    def in_flight(self) -> int:
        """Incoming requests and notifications being handled."""
        return self._core.in_flight

    @property
    def outgoing(self) -> int:
        """Our requests waiting for the peer's answer."""
        return self._core.outgoing

    async def __aenter__(self) -> Self:
        if self._make_transport is not None:
            wire = _Wire(self)
            transport = self._make_transport(wire)
            if self._transport is None:
                wire.connection_made(transport)
            return self
        assert self._sock is not None
        try:
            await self._loop.connect_accepted_socket(lambda: _Wire(self), self._sock)
        except BaseException:
            self._sock.close()
            raise
        return self

    # -- holding the peer's input ------------------------------------------------------------

    @property
    def reading_paused(self) -> bool:
        """Whether the peer's input is left unread now (by :meth:`pause_reading`, or because
        the peer does not read what we write)."""
        return self._reading_held > 0 or self._paused is not None

    def pause_reading(self) -> None:
        """Leave the peer's input unread (in the kernel) until :meth:`resume_reading`.

        Pauses nest: reading resumes when each has been resumed, and not while the write buffer
        is full (that pause is the connection's own). What was read before the pause is still
        handled, answers and responses are still written, and the end of the connection is
        still seen once the transport reads again.
        """
        self._reading_held += 1
        transport = self._transport
        if self._reading_held == 1 and transport is not None and not transport.is_closing():
            transport.pause_reading()

    def resume_reading(self) -> None:
        """Undo one :meth:`pause_reading` (a resume without a pause is a ``RuntimeError``)."""
        if self._reading_held == 0:
            raise RuntimeError("resume_reading without pause_reading")
        self._reading_held -= 1
        transport = self._transport
        if (
            self._reading_held == 0
            and self._paused is None
            and transport is not None
            and not transport.is_closing()
        ):
            transport.resume_reading()

    async def receive_fds(self, max_fds: int, size: int = 1) -> tuple[bytes, list[int]]:
        """Read up to ``size`` bytes straight from the connection's Unix socket, with the
        descriptors the peer attached to them (at most ``max_fds``; close-on-exec, the caller
        owns them), waiting until the peer sends.

        Reading must be paused (:meth:`pause_reading`) before the peer sends: else the
        transport reads the bytes and the kernel closes the descriptors. The bytes are not
        JSON-RPC input: the connection never sees them. Raises
        :class:`~libkiki.errors.Unavailable` if reading is not paused or the transport has no
        socket, :class:`~libkiki.errors.PeerGone` if the peer left, and
        :class:`~libkiki.errors.InvalidRequest` if it attached more than ``max_fds``.
        """
        self._check_open()
        transport = self._transport
        raw = transport.get_extra_info("socket") if transport is not None else None
        if raw is None or raw.family != socket.AF_UNIX:
            raise Unavailable("this connection has no Unix socket to pass descriptors on")
        if self._reading_held == 0:
            raise Unavailable("descriptors are received only while reading is paused")
        return await receive_fds(raw.fileno(), size, max_fds)

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.close()
        finally:
            # Structured: no task of ours outlives the block. close() has cancelled them all and
            # waited a bounded time; one that still runs (it ignores cancellation) is waited for
            # here, as a TaskGroup would. The tasks are not in a TaskGroup because its per-task
            # done-callbacks cost an event-loop iteration per request.
            while pending := self._owned():
                await asyncio.wait(pending)

    def _owned(self) -> list[asyncio.Task[None]]:
        me = asyncio.current_task()
        tasks = [t for t in self._tasks.values() if not t.done() and t is not me]
        if self._progress_task is not None and not self._progress_task.done():
            tasks.append(self._progress_task)
        return tasks

    async def wait_closed(self) -> None:
        """Return once the connection is over (the peer left, or :meth:`close` was called)."""
        await self._closed.wait()

    async def wait_closing(self) -> None:
        """Return once :meth:`close` has begun (e.g. a server draining): time to wrap up."""
        await self._closing_started.wait()

    async def close(self, grace: float = 0.0) -> None:
        """Close; with ``grace``, first refuse new requests and let running ones, and our own
        requests to the peer, finish that long.

        Responses keep being read during the grace period, so handlers waiting on the peer can
        finish. Safe to call more than once and from any task, including a handler.
        """
        if self._closing:
            await self._finished.wait()
            return
        self._closing = True
        self._closing_started.set()
        me = asyncio.current_task()
        try:
            running: list[asyncio.Future[Any]] = [t for t in self._tasks.values() if t is not me]
            running.extend(
                a if isinstance(a, asyncio.Future) else a.waiter(self._loop)
                for a in self._later.values()
            )
            # Our own requests are running work too: a broker draining its callers waits for
            # the providers' answers to the calls it forwarded.
            running.extend(f for f in self._futures.values() if not f.done())
            running.extend(r.waiter(self._loop) for r in self._sent.values())
            if self._gone is None and grace > 0 and running:
                self._core.start_draining()
                await asyncio.wait(running, timeout=grace)
            self._shut(Unavailable("the connection was closed"))
            stragglers = [t for t in self._tasks.values() if t is not me]
            if stragglers:
                await asyncio.wait(stragglers, timeout=_CLOSE_BOUND)
            if self._progress_task is not None:
                self._progress_task.cancel()
            while not self._progress_queue.empty():  # release requests waiting on a marker
                item = self._progress_queue.get_nowait()
                if item[0] is None and not item[1].done():
                    item[1].set_result(None)
            transport = self._transport
            if transport is not None:
                transport.close()  # flushes what is buffered, then connection_lost
                try:
                    async with asyncio.timeout(_CLOSE_BOUND):
                        await self._lost_waiter.wait()
                except TimeoutError:
                    transport.abort()  # a peer that never reads cannot hold us here
        except asyncio.CancelledError:
            # Cancelled part-way (a server's drain bound passed, say): the connection still
            # ends, at once, or it would stay open until its peer chose to leave.
            self._abort()
            raise
        finally:
            self._finished.set()

    def _abort(self) -> None:
        self._shut(Unavailable("the connection was closed"))
        if self._progress_task is not None:
            self._progress_task.cancel()
        if self._transport is not None:
            self._transport.abort()

    # -- calling the peer --------------------------------------------------------------------

    async def request(
        self,
        method: str,
        params: Params | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 -- it also cancels the call at the peer
        on_progress: ProgressCallback | None = None,
    ) -> Any:
        """Call ``method`` on the peer and return its result; its error is raised, typed.

        ``timeout`` (seconds; None for the connection's ``request_timeout``, ``math.inf`` for
        none) covers waiting for an in-flight slot too. ``on_progress`` asks for MCP progress
        (``params`` must then be a dict) and is awaited with each ``notifications/progress``,
        in the connection's reader: it should be quick.
        """
        limit = self._limit(timeout)
        self._check_open()
        deadline = _Deadline(self._loop, limit)
        try:
            await self._outgoing.acquire(1)
            try:
                self._check_open()
                rid, data = self._core.request(method, params, progress=on_progress is not None)
                fut: asyncio.Future[Any] = self._loop.create_future()
                self._futures[rid] = fut
                if on_progress is not None:
                    self._progress[rid] = on_progress
                try:
                    await self._write(data)
                    result = await fut
                    if rid in self._progressed:
                        await self._progress_done(rid)
                    return result
                finally:
                    self._progress.pop(rid, None)
                    self._progressed.discard(rid)
                    if self._futures.pop(rid, None) is not None:
                        fut.cancel()
                        self._abandon(rid, "timeout" if deadline.expired else "cancelled")
            finally:
                self._outgoing.release(1)
        except asyncio.CancelledError:
            if deadline.caused_cancellation():
                assert limit is not None  # only a deadline with a limit expires
                raise _no_answer(method, limit) from None
            raise
        finally:
            deadline.end()

    def limit_requests(self, n: int) -> None:
        """Have at most ``n`` of our requests in flight from now on, when that is fewer than
        this end's own ``max_in_flight``: the peer said that is all it takes at once. Requests
        over it wait for a slot, as over our own limit."""
        self._outgoing.size = max(1, min(self._outgoing.size, n))

    def request_soon(
        self, method: str, params: Params | None = None, *, timeout: float | None = None
    ) -> asyncio.Future[Any] | None:
        """Send a request now and return a future of its result (or of its typed error), with
        no task: None, and nothing sent, when it would have to wait (every in-flight slot is
        taken, or the peer is not reading what we write): ``request`` waits. ``timeout`` is as
        for :meth:`request`: past it the future fails with :class:`~libkiki.errors.Timeout`.
        Either that or cancelling the future tells the peer (``notifications/cancelled``).
        """
        limit = self._limit(timeout)
        if (started := self._start_nowait(method, params)) is None:
            return None
        rid, data = started
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._futures[rid] = fut
        timer = None
        if limit is not None:
            timer = self._loop.call_at(self._loop.time() + limit, self._expire, rid, method, limit)
        fut.add_done_callback(functools.partial(self._request_done, rid, timer))
        self._write_nowait(data)
        return fut

    def _start_nowait(self, method: str, params: Params | None) -> tuple[int, bytes] | None:
        """A request's id and bytes with its in-flight slot taken, or None when it would have
        to wait (every slot taken, or the peer is not reading what we write)."""
        self._check_open()
        if self._paused is not None or not self._outgoing.try_acquire(1):
            return None
        try:
            return self._core.request(method, params)
        except BaseException:
            self._outgoing.release(1)
            raise

    def _expire(self, rid: int, method: str, limit: float) -> None:
        fut = self._futures.get(rid)
        if fut is None or fut.done():
            return  # answered, or cancelled with _request_done still to run: it tells the peer
        del self._futures[rid]
        self._abandon(rid, "timeout")
        fut.set_exception(_no_answer(method, limit))

    def _request_done(
        self, rid: int, timer: asyncio.TimerHandle | None, fut: asyncio.Future[Any]
    ) -> None:
        if timer is not None:
            timer.cancel()
        self._outgoing.release(1)
        if self._futures.pop(rid, None) is not None:  # cancelled by its caller
            self._abandon(rid, "cancelled")

    def request_now(
        self,
        method: str,
        params: Params | None = None,
        *,
        done: Done,
        timeout: float | None = None,
    ) -> Sent | None:
        """:meth:`request_soon` without a future: ``done(result, error)`` is called once, as the
        answer is read (in the reader's turn of the event loop, not one turn later as a future's
        callbacks are), or with the typed error when the timeout passes or the connection ends,
        or with :class:`asyncio.CancelledError` after :meth:`~libkiki.rpc.later.Sent.cancel`
        (the peer is then told, as for a cancelled future). None, and nothing sent, when it
        would have to wait."""
        limit = self._limit(timeout)
        if (started := self._start_nowait(method, params)) is None:
            return None
        rid, data = started
        timer = None
        if limit is not None:
            timer = self._loop.call_at(
                self._loop.time() + limit, self._expire_sent, rid, method, limit
            )
        sent = Sent(
            functools.partial(self._sent_done, timer, done),
            functools.partial(self._cancel_sent, rid),
        )
        self._sent[rid] = sent
        self._write_nowait(data)
        return sent

    def _sent_done(
        self,
        timer: asyncio.TimerHandle | None,
        done: Done,
        result: Any,
        error: BaseException | None,
    ) -> None:
        if timer is not None:
            timer.cancel()
        self._outgoing.release(1)
        done(result, error)

    def _expire_sent(self, rid: int, method: str, limit: float) -> None:
        sent = self._sent.pop(rid, None)
        if sent is None:
            return
        self._abandon(rid, "timeout")
        sent.finish(None, _no_answer(method, limit))

    def _cancel_sent(self, rid: int, sent: Sent) -> None:
        if self._sent.get(rid) is sent:
            del self._sent[rid]
            self._abandon(rid, "cancelled")
        sent.finish(None, asyncio.CancelledError())

    async def notify(self, method: str, params: Params | None = None) -> None:
        self._check_open()
        await self._write(self._core.notification(method, params))

    async def notify_many(self, items: Sequence[tuple[str, Params | None]]) -> None:
        """Send notifications as separate lines in one ``write()``; wait only while the
        transport is paused (also when ``items`` is empty: a way to wait for the peer to read).

        Not a JSON-RPC batch: a peer counts a batch's entries against its in-flight limit all
        at once (and MCP has no batches since 2025-06-18), while separate lines are handled
        one by one. One ``write()`` of the joined bytes rather than ``writelines()``, which on
        CPython 3.13 never pauses the protocol.
        """
        self._check_open()
        notification = self._core.notification
        data = b"".join([notification(method, params) for method, params in items])
        if data:
            await self._write(data)
        elif self._paused is not None:
            await asyncio.shield(self._paused)

    def try_notify(self, method: str, params: Params | None = None) -> bool:
        """Send a notification now if nothing is queued ahead of it; never wait, never queue.

        False (and nothing sent) when the transport still holds unsent bytes or the connection
        is closed: for wake-up style messages that the sender coalesces and sends later, so a
        slow reader costs it nothing.
        """
        transport = self._idle_transport()
        if transport is None:
            return False
        transport.write(self._core.notification(method, params))
        return True

    def try_notify_many(self, items: Sequence[tuple[str, Params | None]]) -> bool:
        """:meth:`notify_many` now, if nothing is queued ahead: separate lines in one
        ``write()``, never waiting, never queued behind unsent bytes. False (and nothing sent)
        as for :meth:`try_notify`."""
        transport = self._idle_transport()
        if transport is None:
            return False
        notification = self._core.notification
        data = b"".join([notification(method, params) for method, params in items])
        if data:
            transport.write(data)
        return True

    def _idle_transport(self) -> asyncio.Transport | None:
        """The transport, if a write now would go out ahead of nothing: the connection is open
        and the transport holds no unsent bytes (the try_notify methods')."""
        transport = self._transport
        if (
            self._gone is not None
            or transport is None
            or transport.is_closing()
            or transport.get_write_buffer_size()
        ):
            return None
        return transport

    def set_write_limits(self, high: int, *, sndbuf: int | None = None) -> None:
        """Lower the write buffer's high-water mark (and the kernel's ``SO_SNDBUF``) so that a
        peer that stops reading holds up our writers sooner."""
        transport = self._transport
        if transport is None:
            return
        transport.set_write_buffer_limits(high=high)
        sock = transport.get_extra_info("socket")
        if sndbuf is not None and sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)

    async def batch(
        self,
        calls: Sequence[Call],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 -- it also cancels the calls at the peer
    ) -> list[Any]:
        """Send ``calls`` as one batch; return, in order, one outcome per non-notification call.

        An outcome is the result, or the :class:`~libkiki.errors.KikiError` the call failed
        with (returned, not raised: the other entries may have succeeded), e.g.
        :class:`~libkiki.errors.PeerGone` for entries unanswered when the peer left. A timeout
        cancels the unanswered entries and raises :class:`~libkiki.errors.Timeout`.
        """
        limit = self._limit(timeout)
        wanted = sum(not c.notification for c in calls)
        self._check_open()
        loop = self._loop
        try:
            async with asyncio.timeout(limit) as scope:
                await self._outgoing.acquire(wanted)
                try:
                    self._check_open()
                    ids, data = self._core.batch(list(calls))
                    futs = {rid: loop.create_future() for rid in ids if rid is not None}
                    self._futures.update(futs)
                    try:
                        await self._write(data)
                        if futs:
                            await asyncio.wait(futs.values())
                    finally:
                        reason = "timeout" if scope.expired() else "cancelled"
                        for rid, fut in futs.items():
                            if self._futures.pop(rid, None) is not None:
                                fut.cancel()
                                self._abandon(rid, reason)
                finally:
                    self._outgoing.release(wanted)
        except TimeoutError:
            raise Timeout(f"no complete answer to a batch within {limit} s") from None
        return [f.exception() or f.result() for f in futs.values()]

    def _limit(self, timeout: float | None) -> float | None:
        limit = self.request_timeout if timeout is None else timeout
        return None if limit is None or math.isinf(limit) else limit

    def _abandon(self, rid: int, reason: str) -> None:
        if self._core.abandon(rid):
            self._write_nowait(
                self._core.notification(CANCELLED, {"requestId": rid, "reason": reason})
            )

    def _check_open(self) -> None:
        if self._gone is not None:
            raise self._lost()

    def _lost(self) -> KikiError:
        # A fresh instance per raise: re-raising one instance would keep growing its traceback.
        assert self._gone is not None
        return type(self._gone)(self._gone.message, data=self._gone.data)

    # -- moving bytes ------------------------------------------------------------------------

    async def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return  # the peer is gone: whoever waits for an answer is failed by _shut
        transport.write(data)
        if self._paused is not None:
            await asyncio.shield(self._paused)

    def _write_nowait(self, data: bytes) -> None:
        # For a task that is being cancelled, and for what is answered while reading (the
        # protocol's own errors, synchronous handlers): no waiting. Reading stops while the
        # buffer is full, so these stay bounded too.
        if self._out is not None:
            self._out.append(data)  # sent in one write when the chunk is read (_received)
            return
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    # Called by _Wire, in the event loop, never concurrently.

    def _received(self, data: bytes) -> None:
        if self._gone is not None:
            return
        # Answers made while reading one chunk leave together: one write, one wake-up of the
        # peer, rather than one per pipelined request.
        out = self._out = []
        input_starts()
        try:
            for item in self._decoder.feed(data):
                for event in self._core.receive(item):
                    self._handle(event)
        except Exception:
            log.exception("%s: JSON-RPC connection failed", self.name)
            self._shut(PeerGone())
            if self._transport is not None:
                self._transport.abort()
        finally:
            try:
                self._out = None
                if out:
                    self._write_nowait(b"".join(out) if len(out) > 1 else out[0])
                if self._answered:
                    if self._writing_paused():
                        # Not taken yet: they count as in flight until the transport drains,
                        # as answers written by tasks do (see _run).
                        self._unreleased.extend(self._answered)
                    else:
                        for slot in self._answered:
                            self._core.release(slot)
                    self._answered.clear()
            finally:
                # Whatever happened above, the read is over: a depth left raised would hold
                # every later after_input callback of this thread forever.
                input_ends()  # libkiki.rpc.later.after_input's callbacks

    def _eof(self) -> None:
        if self._decoder.pending:
            log.info("%s: peer left in the middle of a message", self.name)
        self._shut(self._parting or PeerGone())

    def _connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.info("%s: connection lost: %s", self.name, exc)
        self._shut(self._parting or PeerGone())
        self._resume()
        self._lost_waiter.set()

    def _writing_paused(self) -> bool:
        return self._paused is not None

    def _pause(self) -> None:
        if self._paused is None:
            self._paused = self._loop.create_future()
            if self._transport is not None:
                self._transport.pause_reading()

    def _resume(self) -> None:
        if self._paused is not None:
            if not self._paused.done():
                self._paused.set_result(None)
            self._paused = None
            for slot in self._unreleased:
                self._core.release(slot)
            self._unreleased.clear()
            if (
                self._transport is not None
                and not self._transport.is_closing()
                and not self._reading_held
            ):
                self._transport.resume_reading()

    def _shut(self, error: KikiError) -> None:
        """Fail everything that waits on the peer and cancel every handler (once)."""
        if self._gone is not None:
            return
        self._gone = error
        for rid in self._core.abandon_all():
            fut = self._futures.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_exception(self._lost())
            elif (sent := self._sent.pop(rid, None)) is not None:
                # One turn later, as a future's callbacks would run: connections shut together
                # (a server stopping) are all shut before any of their requests' ends is told,
                # so a call forwarded from one to another ends with its caller's connection,
                # unanswered, not with an answer about the other's end.
                self._loop.call_soon(sent.finish, None, self._lost())
        me = asyncio.current_task()
        for slot, task in self._tasks.items():
            if task is not me:
                self._cancel(slot, task)
        for answer in list(self._later.values()):
            answer.cancel()
        self._closed.set()

    def _cancel(self, slot: int, task: asyncio.Task[None]) -> None:
        task.cancel()
        # A task cancelled before its first step never enters _run, whose finally releases the
        # slot: reap it when it is done (only cancelled tasks pay for the callback).
        task.add_done_callback(functools.partial(self._reap, slot))
        rest = self._rests.pop(slot, None)
        if rest is not None:
            # The task had not started: it will never await the rest of the handler, so the
            # rest is closed here (never run, as an async handler's task cancelled this early).
            if isinstance(rest, Coroutine):
                rest.close()
            elif isinstance(rest, asyncio.Future):
                rest.cancel()

    def _reap(self, slot: int, task: asyncio.Task[None]) -> None:
        if self._tasks.get(slot) is not task:
            return  # _run's finally has released it (and the slot may be another's now)
        del self._tasks[slot]
        if (data := self._core.complete(slot, None)) is not None:
            self._write_nowait(data)  # the rest of a batch this entry belonged to
        self._core.release(slot)

    def _handle(self, event: Event) -> None:
        if isinstance(event, Incoming):
            self._start(event)
        elif isinstance(event, Send):
            self._write_nowait(event.data)
        elif isinstance(event, ResponseReceived):
            fut = self._futures.pop(event.id, None)
            if fut is not None:
                if not fut.done():
                    if event.error is None:
                        fut.set_result(event.result)
                    else:
                        fut.set_exception(event.error)
            elif (sent := self._sent.pop(event.id, None)) is not None:
                sent.finish(event.result, event.error)
        elif isinstance(event, CancelRequested):
            task = self._tasks.get(event.slot)
            answer = self._later.get(event.slot)
            if task is not None or answer is not None:
                log.debug("%s: peer cancelled request %r: %s", self.name, event.id, event.reason)
            if task is not None:
                self._cancel(event.slot, task)
            elif answer is not None:
                answer.cancel()
        elif isinstance(event, ProgressReceived):
            callback = self._progress.get(event.id)
            if callback is not None:
                self._queue_progress(event.id, callback, event.params)
        elif isinstance(event, UnmatchedResponse):
            if event.id is None and isinstance(event.error, LimitExceeded | Unavailable):
                # A server refusing the connection says why (id null) and closes: that is what
                # the requests still waiting are failed with, rather than a bare PeerGone.
                self._parting = event.error
            if event.abandoned:
                log.debug("%s: late answer to abandoned request %r", self.name, event.id)
            else:
                log.warning(
                    "%s: ignored a response to unknown id %r (%s)", self.name, event.id, event.error
                )
        elif isinstance(event, Dropped):
            log.warning("%s: dropped notification %s: %s", self.name, event.method, event.reason)

    def _queue_progress(self, rid: int, callback: ProgressCallback, params: dict[str, Any]) -> None:
        if self._closing:
            return
        try:
            self._progress_queue.put_nowait((callback, params))
        except asyncio.QueueFull:
            log.warning("%s: progress callbacks are behind; dropped one", self.name)
            return
        self._progressed.add(rid)
        if self._progress_task is None:
            self._progress_task = self._loop.create_task(
                self._run_progress(), name=f"rpc-progress {self.name}"
            )

    async def _progress_done(self, rid: int) -> None:
        """Wait until the callbacks queued for ``rid`` have run: the queue is FIFO, so a marker
        put behind them is reached after them. Progress is never reported after the result."""
        if self._closing or self._progress_task is None:
            return  # close() drops what is queued; nothing would reach the marker
        marker: asyncio.Future[None] = self._loop.create_future()
        await self._progress_queue.put((None, marker))
        if not self._closing:  # else close() ran while we waited for room: nobody reads it
            await marker

    async def _run_progress(self) -> None:
        while True:
            item = await self._progress_queue.get()
            if item[0] is None:
                if not item[1].done():
                    item[1].set_result(None)
                continue
            try:
                await item[0](item[1])
            except Exception:
                log.exception("%s: progress callback failed", self.name)

    def _start(self, event: Incoming) -> None:
        if event.notification and (inline := self.methods._inline.get(event.method)):
            try:
                inline(event.message.get("params"))
            except Exception:
                log.exception("%s: notification %s failed", self.name, event.method)
            self._core.complete(event.slot, None)
            self._core.release(event.slot)
            return
        ctx = RequestContext(
            self,
            self.peer,
            event.method,
            event.id,
            event.notification,
            event.meta,
            event.progress_token,
        )
        # A synchronous handler answers here, unless a request read before it still runs in a
        # task: then it queues behind it in a task too, so that answers that need no waiting
        # leave in the order their requests came, as they did when every request had a task.
        if self.methods._sync and not self._tasks and self._paused is None:
            answer = dispatch_now(self.methods, ctx, event.message)
            if isinstance(answer, dict):
                # Answered as read: no task, no extra turn of the event loop. The slot is
                # released once the answer is handed to the transport (_received).
                if (data := self._core.complete(event.slot, answer)) is not None:
                    self._write_nowait(data)
                self._answered.append(event.slot)
                return
            if isinstance(answer, Reply):
                # Answered as the reply is settled, in that turn of the loop: no task either.
                self._later[event.slot] = answer
                answer.bind(functools.partial(self._settle, event))
                return
            if isinstance(answer, asyncio.Future):
                # Answered when the future is done, by its callback: no task either.
                self._later[event.slot] = answer
                answer.add_done_callback(functools.partial(self._settle, event))
                return
            if answer is not None:
                self._rests[event.slot] = answer
        # Never run once the connection is shut: _received drops input from then on.
        # Not an eager task (3.12+): measured on 3.13, pinned, 7 interleaved rounds, they took
        # 2 µs off a forwarded call's 225 (tests/bench), not worth handlers that start before
        # the rest of their read is seen. Synchronous handlers above are the opt-in for
        # handlers that never wait.
        self._tasks[event.slot] = self._loop.create_task(self._run(event, ctx))

    def _settle(self, event: Incoming, answer: asyncio.Future[Any] | Reply) -> None:
        """A synchronous handler's future or reply is done: answer it (not if it was
        cancelled)."""
        self._later.pop(event.slot, None)
        response = None if answer.cancelled() else settled(event.method, event.id, answer)
        if (data := self._core.complete(event.slot, response)) is not None:
            self._write_nowait(data)
        if self._out is not None:
            self._answered.append(event.slot)  # settled while reading: released with the chunk
        elif self._writing_paused():
            self._unreleased.append(event.slot)  # in flight until written, as in _received
        else:
            self._core.release(event.slot)

    async def _run(self, event: Incoming, ctx: RequestContext) -> None:
        response: dict[str, Any] | None
        pending = self._rests.pop(event.slot, None)
        try:
            try:
                if pending is None:
                    response = await dispatch(self.methods, ctx, event.message)
                else:
                    response = await finish(event.method, event.id, pending)
            except asyncio.CancelledError:
                if (data := self._core.complete(event.slot, None)) is not None:
                    self._write_nowait(data)  # the rest of a batch this entry belonged to
                raise
            except Exception:
                # Handlers' own exceptions never get here (the method guard answers them): this
                # is a fault in the dispatch machinery, and it must not end the connection.
                log.exception("%s: dispatching %s failed", self.name, event.method)
                response = (
                    None if event.notification else error_response(event.id, dict(INTERNAL_ERROR))
                )
            if (data := self._core.complete(event.slot, response)) is not None:
                await self._write(data)
        finally:
            # Released only once written: a peer that does not read its answers runs into its
            # in-flight limit instead of into our memory.
            self._tasks.pop(event.slot, None)
            self._core.release(event.slot)
