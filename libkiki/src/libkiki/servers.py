"""Accepting stream connections: one accept loop, one admission gate, one way to refuse.

:func:`accept_forever` is the one accept loop every Kiki server runs (:func:`serve_stream` here,
and :class:`libkiki.rpc.server.RpcServer`), and :class:`Gate` the one admission at ``accept()``
both use (the rules and the counters are in :mod:`libkiki.admission`). :func:`serve_stream`
owns the accept loop and every connection's task in one ``TaskGroup``, so leaving it (the
service draining) stops accepting, lets live connections finish within the runner's drain bound,
and cancels whatever is left.

A refused peer is sent the protocol's refusal at once, then the server shuts down its writing
and reads what the peer sent, discarding it, before closing: a socket closed with unread input
resets the peer, which would lose the refusal. Up to ``MAX_LINGERING`` refused peers are read to
their end (bounded in bytes and time); past that, a refused peer is closed as soon as what it
had already sent is discarded. Refusals are logged through a token bucket, with a summary of
what it held back, so a flood of connects costs a bounded number of log lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from libkiki.admission import (
    ACCEPT_BACKOFF,
    SHORTAGE,
    Admission,
    AdmissionLimits,
    LogBudget,
    Refused,
    Ticket,
)
from libkiki.errors import LimitExceeded
from libkiki.peer import peer_cred

__all__ = ["ACCEPT_BACKOFF", "SHORTAGE", "Gate", "accept_forever", "serve_stream"]

log = logging.getLogger(__name__)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
# The protocol's refusal, as bytes on the wire, for the error the peer is to read.
Refusal = Callable[[LimitExceeded], bytes]

STREAM_LIMIT = 1 << 16
_TRANSIENT = SHORTAGE | {errno.ECONNABORTED}
REFUSE_DRAIN = 1 << 20  # bytes of a refused peer's input read and discarded before closing
REFUSE_TIMEOUT = 1.0  # seconds a refused peer is given to finish sending


async def accept_forever(
    listener: socket.socket,
    on_accept: Callable[[socket.socket], None],
    counters: Counter[str],
) -> None:
    """Accept until cancelled, handing each non-blocking connection to ``on_accept`` (which must
    not block: it starts a task or refuses). A transient failure (out of descriptors or memory)
    is logged and retried after a pause; any other ends the loop, logged."""
    loop = asyncio.get_running_loop()
    listener.setblocking(False)
    while True:
        try:
            conn, _ = await loop.sock_accept(listener)
        except OSError as exc:
            if exc.errno not in _TRANSIENT:
                log.error("accept() failed, no longer accepting: %s", exc)
                return
            counters["accept_errors"] += 1
            log.warning("accept() failed: %s", exc)
            await asyncio.sleep(ACCEPT_BACKOFF)
            continue
        conn.setblocking(False)
        on_accept(conn)


class Gate:
    """Admission for one listener, at ``accept()``: see :mod:`libkiki.admission`.

    ``refusal`` renders the protocol's refusal of a peer; ``name`` (the socket's) is for logs.
    """

    def __init__(
        self, limits: AdmissionLimits, refusal: Refusal, counters: Counter[str], name: str
    ) -> None:
        self.admission = Admission(limits, counters)
        self.name = name
        self._refusal = refusal
        self._log = LogBudget()
        self._summary: asyncio.TimerHandle | None = None

    def admit(self, conn: socket.socket, tg: asyncio.TaskGroup) -> Ticket | None:
        """A ticket for ``conn`` (release it when the connection ends), or None: then ``conn``
        has been refused and is no longer the caller's."""
        try:
            uid = peer_cred(conn, app=False).uid
        except OSError as exc:  # it left already, say
            self.admission.counters["accept_errors"] += 1
            log.debug("%s: dropping a connection whose identity cannot be read: %s", self.name, exc)
            conn.close()
            return None
        decision = self.admission.admit(uid)
        if isinstance(decision, Ticket):
            return decision
        self._note(decision)
        if self._tell(conn, decision.error) and decision.linger:
            tg.create_task(self._linger(conn))
            return None
        conn.close()
        if decision.linger:
            self.admission.lingered()
        return None

    def release(self, ticket: Ticket) -> None:
        self.admission.release(ticket)

    def start(
        self,
        tg: asyncio.TaskGroup,
        conn: socket.socket,
        ticket: Ticket,
        serve: Coroutine[Any, Any, None],
        *,
        name: str | None = None,
    ) -> asyncio.Task[None]:
        """Run ``serve`` (the admitted connection's work) in ``tg``; however its task ends, the
        ticket is released and ``conn`` closed. A task cancelled before its first step (a
        server stopping right after ``accept()``) never runs the coroutine's own ``finally``:
        without this the connection would count against the limits, and its peer wait, for ever."""
        task = tg.create_task(serve, name=name)

        def done(_: asyncio.Task[None]) -> None:
            self.release(ticket)  # releasing twice is harmless
            conn.close()  # so is closing a socket its transport already closed

        task.add_done_callback(done)
        return task

    def close(self) -> None:
        """The listener stops: say what the log budget still held back."""
        if self._summary is not None:
            self._summary.cancel()
            self._summarize()

    def _tell(self, conn: socket.socket, error: LimitExceeded) -> bool:
        """Send the refusal and discard what the peer sent so far; True if it may send more."""
        try:
            # A fresh socket's send buffer is empty, and a refusal is a few hundred bytes.
            conn.send(self._refusal(error))
            conn.shutdown(socket.SHUT_WR)
            left = REFUSE_DRAIN
            while left > 0:
                data = conn.recv(65536)
                if not data:
                    return False
                left -= len(data)
        except BlockingIOError:
            return True
        except OSError:
            pass
        return False

    async def _linger(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(REFUSE_TIMEOUT):
                left = REFUSE_DRAIN
                while left > 0 and (data := await loop.sock_recv(conn, 65536)):
                    left -= len(data)
        except (OSError, TimeoutError):
            pass
        finally:
            conn.close()
            self.admission.lingered()

    def _note(self, refused: Refused) -> None:
        if self._log.allow(time.monotonic()):
            log.warning(
                "%s: refusing a connection from uid %d: %s", self.name, refused.uid, refused.error
            )
        elif self._summary is None:
            loop = asyncio.get_running_loop()
            self._summary = loop.call_later(self._log.interval, self._summarize)

    def _summarize(self) -> None:
        self._summary = None
        if count := self._log.take_suppressed():
            log.warning(
                "%s: %d more connections refused (not logged one by one); live: %d, by uid: %s",
                self.name,
                count,
                self.admission.live,
                dict(self.admission.by_uid.most_common(3)),
            )


async def _run_connection(
    handler: Handler,
    conn: socket.socket,
    ticket: Ticket,
    gate: Gate,
    live: dict[asyncio.StreamWriter, asyncio.StreamReader],
    counters: Counter[str],
) -> None:
    try:
        reader, writer = await asyncio.open_connection(sock=conn, limit=STREAM_LIMIT)
    except BaseException:
        conn.close()
        gate.release(ticket)
        raise
    live[writer] = reader
    try:
        await handler(reader, writer)
    except (ConnectionError, BrokenPipeError):
        counters["disconnects"] += 1  # the peer went away mid-conversation: its loss only
    except Exception:
        counters["handler_errors"] += 1
        log.exception("connection handler failed")
    finally:
        live.pop(writer, None)
        gate.release(ticket)
        writer.close()
        with contextlib.suppress(ConnectionError, BrokenPipeError):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def serve_stream(
    listener: socket.socket,
    handler: Handler,
    *,
    limits: AdmissionLimits,
    refusal: Refusal,
    counters: Counter[str],
    name: str = "listener",
) -> AsyncIterator[dict[asyncio.StreamWriter, asyncio.StreamReader]]:
    """Serve ``listener`` until the block exits; yields the set of live connections."""
    live: dict[asyncio.StreamWriter, asyncio.StreamReader] = {}
    gate = Gate(limits, refusal, counters, name)

    async with asyncio.TaskGroup() as tg:

        def on_accept(conn: socket.socket) -> None:
            ticket = gate.admit(conn, tg)
            if ticket is not None:
                gate.start(
                    tg, conn, ticket, _run_connection(handler, conn, ticket, gate, live, counters)
                )

        acceptor = tg.create_task(accept_forever(listener, on_accept, counters))
        try:
            yield live
        finally:
            acceptor.cancel()
            gate.close()
            # Draining: stop reading, and let each handler see end-of-input so it finishes the
            # requests it already has, writes their answers and closes.
            for writer, reader in list(live.items()):
                transport = writer.transport
                if isinstance(transport, asyncio.ReadTransport):
                    transport.pause_reading()
                reader.feed_eof()
