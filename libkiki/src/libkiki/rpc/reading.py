"""The read side of a :class:`~libkiki.rpc.Connection`: the protocol its transport feeds.

A :class:`Reader` is the connection's :class:`asyncio.BufferedProtocol`. Each chunk the
transport reads is split into lines, each line is handed to the sans-I/O core, and each of the
core's events to the part of the connection it is for (:class:`Routes`), all in
``buffer_updated`` itself (no task wake-up per message). A chunk is one read: the
:class:`~libkiki.rpc.link.Link` collects what is answered while it is handled into one write,
and :func:`~libkiki.rpc.later.after_input` callbacks run once it has been handled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from libkiki.framing import LineDecoder, Oversized
from libkiki.rpc.later import input_ends, input_starts
from libkiki.rpc.link import Link
from libkiki.rpc.messages import (
    CancelRequested,
    Dropped,
    Event,
    Incoming,
    ProgressReceived,
    ResponseReceived,
    Send,
    UnmatchedResponse,
)

__all__ = ["READ_SIZE", "Reader", "Routes"]

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024  # bytes taken from the transport per read


class Routes(NamedTuple):
    """Where each of the core's events goes (a :class:`~libkiki.rpc.messages.Dropped` one is
    logged)."""

    incoming: Callable[[Incoming], None]  # a request or notification from the peer
    send: Callable[[bytes], None]  # the core's own answer (an error, a refusal)
    response: Callable[[ResponseReceived], None]  # an answer to one of our requests
    cancel: Callable[[CancelRequested], None]  # the peer cancelled one of its requests
    progress: Callable[[ProgressReceived], None]  # progress of one of our requests
    unmatched: Callable[[UnmatchedResponse], None]  # an answer to no request of ours


class Reader(asyncio.BufferedProtocol):
    """Decodes what the transport reads and hands the core's events to their ``routes``.

    ``receive(line)`` is the core's (it returns the line's events). ``broken()`` is called when
    handling a chunk raised (a fault of ours: the connection ends); ``ended(lost)`` when the
    input ends: with False at the end of input, with True once the connection is lost.
    ``name`` is for the log.

    Buffered, so that the transport reads into one buffer of ours: a plain Protocol gets a fresh
    ``recv(256 KiB)`` bytes object per read, which glibc serves with mmap/mremap/munmap (about
    13 µs a read, more than the rest of reading a request).
    """

    def __init__(
        self,
        link: Link,
        decoder: LineDecoder,
        receive: Callable[[bytes | Oversized], Iterable[Event]],
        routes: Routes,
        broken: Callable[[], None],
        ended: Callable[[bool], None],
        name: str,
    ) -> None:
        self._link = link
        self._feed: Callable[[bytes], Iterator[bytes | Oversized]] = decoder.feed
        self._decoder = decoder
        self._receive = receive
        self._routes = routes
        self._broken = broken
        self._ended = ended
        self._name = name
        self._buffer = bytearray(READ_SIZE)
        self._view = memoryview(self._buffer)
        self.stopped = False  # the connection is over: input is dropped from then on

    def received(self, data: bytes) -> None:
        """Handle one chunk of input (one read)."""
        if self.stopped:
            return
        link = self._link
        # Answers made while reading one chunk leave together: one write, one wake-up of the
        # peer, rather than one per pipelined request.
        link.hold()
        input_starts()
        try:
            receive, routes = self._receive, self._routes
            for item in self._feed(data):
                for event in receive(item):
                    # By frequency: a request, then the answer to one of ours.
                    if isinstance(event, Incoming):
                        routes.incoming(event)
                    elif isinstance(event, Send):
                        routes.send(event.data)
                    elif isinstance(event, ResponseReceived):
                        routes.response(event)
                    elif isinstance(event, CancelRequested):
                        routes.cancel(event)
                    elif isinstance(event, ProgressReceived):
                        routes.progress(event)
                    elif isinstance(event, UnmatchedResponse):
                        routes.unmatched(event)
                    elif isinstance(event, Dropped):
                        log.warning(
                            "%s: dropped notification %s: %s",
                            self._name,
                            event.method,
                            event.reason,
                        )
        except Exception:
            log.exception("%s: JSON-RPC connection failed", self._name)
            self._broken()
        finally:
            try:
                link.flush()
            finally:
                # Whatever happened above, the read is over: a depth left raised would hold
                # every later after_input callback of this thread forever.
                input_ends()

    # asyncio.BufferedProtocol, called by the transport in the event loop, never concurrently.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._link.attach(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        # The decoder keeps what it needs, so the buffer is free again when this returns.
        self.received(bytes(self._view[:nbytes]))

    def eof_received(self) -> bool:
        if self._decoder.pending:
            log.info("%s: peer left in the middle of a message", self._name)
        self._ended(False)
        return False  # close our side too: the connection treats end of input as the peer leaving

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.info("%s: connection lost: %s", self._name, exc)
        self._ended(True)

    def pause_writing(self) -> None:
        self._link.pause_writing()

    def resume_writing(self) -> None:
        self._link.resume_writing()
