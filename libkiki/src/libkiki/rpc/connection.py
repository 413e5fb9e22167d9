"""A symmetric JSON-RPC 2.0 connection over a connected stream socket, one JSON text per line.

Both ends serve a method table and send requests, notifications and batches. The protocol is in
:mod:`libkiki.rpc.protocol`; this layer only moves bytes and runs tasks, all owned by a
connection and none of which outlives the ``async with Connection(sock, ...)`` block.
:class:`Connection` composes one part per job, each described in its module, and owns their
lifecycle: :mod:`~libkiki.rpc.reading` (the protocol the transport feeds, input handled as it
is read), :mod:`~libkiki.rpc.link` (the write side and the transport's flow control),
:mod:`~libkiki.rpc.answering` (the peer's requests), :mod:`~libkiki.rpc.calling` (ours, with
:mod:`~libkiki.rpc.progress`), :mod:`~libkiki.rpc.notifying` (our notifications).

Behaviour worth knowing:

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
import logging
import socket
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from libkiki.errors import KikiError, LimitExceeded, PeerGone, Unavailable
from libkiki.framing import DEFAULT_MAX_LINE, LineDecoder
from libkiki.peer import PeerCred
from libkiki.rpc.answering import Answering
from libkiki.rpc.calling import Calling
from libkiki.rpc.fds import receive_fds
from libkiki.rpc.later import Done, Sent
from libkiki.rpc.link import Link
from libkiki.rpc.messages import Call, Params, UnmatchedResponse
from libkiki.rpc.methods import Handler, Methods
from libkiki.rpc.notifying import Notifying
from libkiki.rpc.progress import Progress, ProgressCallback
from libkiki.rpc.protocol import RpcCore
from libkiki.rpc.reading import Reader, Routes

__all__ = ["Connection", "ProgressCallback", "TransportFactory"]

log = logging.getLogger(__name__)

# Makes the transport of a Connection not on a socket, given the protocol it is to feed.
TransportFactory = Callable[[asyncio.BufferedProtocol], asyncio.Transport]

DEFAULT_MAX_IN_FLIGHT = 64
DEFAULT_REQUEST_TIMEOUT = 30.0
_CLOSE_BOUND = 2.0  # seconds granted to cancelled handlers and to flushing at close


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
        self._peer = peer
        self._methods = Methods.of(methods)
        self._name = name or peer.describe()
        self.state: dict[str, Any] = {}  # free for the application (e.g. a provider's tools)
        if (sock is None) == (transport is None):
            raise TypeError("a Connection takes a socket or a transport factory, not both")
        self._sock = sock
        self._make_transport = transport
        # The loop, looked up once: on 3.11 every get_running_loop() is a getpid() system call.
        loop = self._loop = asyncio.get_running_loop()
        # Nothing is sent that a peer with the default limit would drop (unless our own limit
        # is larger: then the peers are taken to be configured alike).
        sendable = max(max_line, DEFAULT_MAX_LINE)
        core = self._core = RpcCore(
            max_in_flight=max_in_flight, counters=counters, max_line=sendable
        )
        link = self._link = Link(loop, core.release)
        self._progress = Progress(loop, self._name)
        self._notifying = Notifying(core, link, self._check_open, self._is_open)
        self._calling = Calling(
            loop,
            core,
            link,
            self._progress,
            self._check_open,
            max_in_flight=max_in_flight,
            request_timeout=request_timeout,
        )
        self._answering = Answering(loop, core, link, self._methods, self, peer, self._name)
        self._reader = Reader(
            link,
            LineDecoder(max_line),
            core.receive,
            Routes(
                incoming=self._answering.start,
                send=link.write_nowait,
                response=self._calling.answered,
                cancel=self._answering.cancel_requested,
                progress=self._calling.progressed,
                unmatched=self._unmatched,
            ),
            self._broken,
            self._ended,
            self.name,
        )
        self._lost_waiter = asyncio.Event()  # connection_lost has run
        self._gone: KikiError | None = None  # why the connection ended; copied, never re-raised
        self._parting: KikiError | None = None  # a refusal the peer sent before it left
        self._closed = asyncio.Event()
        self._closing_started = asyncio.Event()
        self._finished = asyncio.Event()
        self._closing = False

    # Read-only: the parts were given them at construction, so a new value would not reach them.

    @property
    def peer(self) -> PeerCred:
        """Who is at the other end (its credentials, as the connection was given them)."""
        return self._peer

    @property
    def methods(self) -> Methods:
        """The methods served to the peer: a mutable table, registered into as needed."""
        return self._methods

    @property
    def name(self) -> str:
        """The connection's name in the log."""
        return self._name

    @property
    def request_timeout(self) -> float | None:
        """Seconds a request given no timeout of its own waits (None: no limit)."""
        return self._calling.request_timeout

    @request_timeout.setter
    def request_timeout(self, value: float | None) -> None:
        self._calling.request_timeout = value

    @property
    def counters(self) -> Counter[str]:
        return self._core.counters

    @property
    def closed(self) -> bool:
        return self._gone is not None

    @property
    def write_buffer_size(self) -> int:
        """Bytes written but not yet taken by the kernel (bounded by the high-water mark)."""
        return self._link.buffer_size

    @property
    def in_flight(self) -> int:
        """Incoming requests and notifications being handled."""
        return self._core.in_flight

    @property
    def outgoing(self) -> int:
        """Our requests waiting for the peer's answer."""
        return self._core.outgoing

    async def __aenter__(self) -> Self:
        reader = self._reader
        if self._make_transport is not None:
            transport = self._make_transport(reader)
            if not self._link.attached:
                reader.connection_made(transport)
            return self
        assert self._sock is not None
        try:
            await self._loop.connect_accepted_socket(lambda: reader, self._sock)
        except BaseException:
            self._sock.close()
            raise
        return self

    # -- holding the peer's input ------------------------------------------------------------

    @property
    def reading_paused(self) -> bool:
        """Whether the peer's input is left unread now (by :meth:`pause_reading`, or because
        the peer does not read what we write)."""
        return self._link.reading_held > 0 or self._link.paused is not None

    def pause_reading(self) -> None:
        """Leave the peer's input unread (in the kernel) until :meth:`resume_reading`.

        Pauses nest: reading resumes when each has been resumed, and not while the write buffer
        is full (that pause is the connection's own). What was read before the pause is still
        handled, answers and responses are still written, and the end of the connection is
        still seen once the transport reads again.
        """
        self._link.pause_reading()

    def resume_reading(self) -> None:
        """Undo one :meth:`pause_reading` (a resume without a pause is a ``RuntimeError``)."""
        self._link.resume_reading()

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
        raw = self._link.unix_socket()
        if raw is None:
            raise Unavailable("this connection has no Unix socket to pass descriptors on")
        if self._link.reading_held == 0:
            raise Unavailable("descriptors are received only while reading is paused")
        return await receive_fds(raw.fileno(), size, max_fds)

    # -- the lifecycle -----------------------------------------------------------------------

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
        tasks = [t for t in self._answering.tasks.values() if not t.done() and t is not me]
        progress = self._progress.task
        if progress is not None and not progress.done():
            tasks.append(progress)
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
        self._progress.closed = True
        self._closing_started.set()
        me = asyncio.current_task()
        try:
            running = self._answering.running()
            # Our own requests are running work too: a broker draining its callers waits for
            # the providers' answers to the calls it forwarded.
            running.extend(self._calling.waiting())
            if self._gone is None and grace > 0 and running:
                self._core.start_draining()
                await asyncio.wait(running, timeout=grace)
            self._shut(Unavailable("the connection was closed"))
            stragglers = [t for t in self._answering.tasks.values() if t is not me]
            if stragglers:
                await asyncio.wait(stragglers, timeout=_CLOSE_BOUND)
            self._progress.stop()
            self._progress.drop_queued()  # release requests waiting on a marker
            if self._link.close():  # flushes what is buffered, then connection_lost
                try:
                    async with asyncio.timeout(_CLOSE_BOUND):
                        await self._lost_waiter.wait()
                except TimeoutError:
                    self._link.abort()  # a peer that never reads cannot hold us here
        except asyncio.CancelledError:
            # Cancelled part-way (a server's drain bound passed, say): the connection still
            # ends, at once, or it would stay open until its peer chose to leave.
            self._abort()
            raise
        finally:
            self._finished.set()

    def _abort(self) -> None:
        self._shut(Unavailable("the connection was closed"))
        self._progress.stop()
        self._link.abort()

    def _shut(self, error: KikiError) -> None:
        """Fail everything that waits on the peer and cancel every handler (once)."""
        if self._gone is not None:
            return
        self._gone = error
        self._reader.stopped = True
        self._calling.fail_all(self._lost)
        self._answering.cancel_all()
        self._closed.set()

    def _is_open(self) -> bool:
        return self._gone is None

    def _check_open(self) -> None:
        if self._gone is not None:
            raise self._lost()

    def _lost(self) -> KikiError:
        # A fresh instance per raise: re-raising one instance would keep growing its traceback.
        assert self._gone is not None
        return type(self._gone)(self._gone.message, data=self._gone.data)

    # Called by the Reader, in the event loop, never concurrently.

    def _broken(self) -> None:
        self._shut(PeerGone())
        self._link.abort()

    def _ended(self, lost: bool) -> None:
        self._shut(self._parting or PeerGone())
        if lost:
            self._link.resume_writing()
            self._lost_waiter.set()

    def _unmatched(self, event: UnmatchedResponse) -> None:
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

    # -- calling the peer --------------------------------------------------------------------
    # request, notify and notify_many hand back their part's coroutine rather than awaiting it
    # in one of their own: a coroutine per call fewer on the hot path, and the same to await.

    def request(
        self,
        method: str,
        params: Params | None = None,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Coroutine[Any, Any, Any]:
        """Call ``method`` on the peer: returns an awaitable of its result; the peer's error is
        raised from it, typed (:mod:`libkiki.errors`).

        ``timeout`` (seconds; None for the connection's ``request_timeout``, ``math.inf`` for
        none) covers waiting for an in-flight slot too; when it passes, or the awaiting task is
        cancelled, the peer is sent ``notifications/cancelled`` and
        :class:`~libkiki.errors.Timeout` (or the cancellation) is raised. ``on_progress`` asks
        for MCP progress (``params`` must then be a dict) and is awaited with each
        ``notifications/progress``, in the connection's reader: it should be quick; the result
        is returned only after the callbacks queued before it have run. Raises the
        connection's typed error (:class:`~libkiki.errors.PeerGone`,
        :class:`~libkiki.errors.Unavailable`) once it is over.
        """
        return self._calling.request(method, params, timeout=timeout, on_progress=on_progress)

    def limit_requests(self, n: int) -> None:
        """Have at most ``n`` of our requests in flight from now on (see
        :meth:`~libkiki.rpc.calling.Calling.limit`)."""
        self._calling.limit(n)

    def request_soon(
        self, method: str, params: Params | None = None, *, timeout: float | None = None
    ) -> asyncio.Future[Any] | None:
        """Send a request now, with no task; a future of its result, or None when it would
        have to wait (see :meth:`~libkiki.rpc.calling.Calling.request_soon`)."""
        return self._calling.request_soon(method, params, timeout=timeout)

    def request_now(
        self,
        method: str,
        params: Params | None = None,
        *,
        done: Done,
        timeout: float | None = None,
    ) -> Sent | None:
        """Send a request now, with no task; ``done(result, error)`` is called as it ends, or
        None when it would have to wait (see :meth:`~libkiki.rpc.calling.Calling.request_now`)."""
        return self._calling.request_now(method, params, done=done, timeout=timeout)

    async def batch(
        self,
        calls: Sequence[Call],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 -- it also cancels the calls at the peer
    ) -> list[Any]:
        """Send ``calls`` as one batch; one outcome per non-notification call, in order (see
        :meth:`~libkiki.rpc.calling.Calling.batch`)."""
        return await self._calling.batch(calls, timeout=timeout)

    # -- notifying the peer (libkiki.rpc.notifying) ------------------------------------------

    def notify(self, method: str, params: Params | None = None) -> Coroutine[Any, Any, None]:
        """Send a notification: returns an awaitable that waits while the transport is full."""
        return self._notifying.notify(method, params)

    def notify_many(self, items: Sequence[tuple[str, Params | None]]) -> Coroutine[Any, Any, None]:
        """Send notifications as separate lines in one ``write()`` (not a batch): returns an
        awaitable that waits only while the transport is full, also when ``items`` is empty (a
        way to wait for the peer to read). See
        :meth:`~libkiki.rpc.notifying.Notifying.notify_many`."""
        return self._notifying.notify_many(items)

    def try_notify(self, method: str, params: Params | None = None) -> bool:
        """Send a notification now if nothing is queued ahead of it; never wait, never queue:
        False, and nothing sent, otherwise or once the connection is closed."""
        return self._notifying.try_notify(method, params)

    def try_notify_many(self, items: Sequence[tuple[str, Params | None]]) -> bool:
        """:meth:`notify_many` now, if nothing is queued ahead (as :meth:`try_notify`)."""
        return self._notifying.try_notify_many(items)

    def set_write_limits(self, high: int, *, sndbuf: int | None = None) -> None:
        """Lower the write buffer's high-water mark (and the kernel's ``SO_SNDBUF``) so that a
        peer that stops reading holds up our writers sooner."""
        self._link.set_write_limits(high, sndbuf=sndbuf)
