"""Accepting stream connections with structured concurrency and a connection limit.

:func:`accept_forever` is the one accept loop every Kiki server runs (:func:`serve_stream` here,
and :class:`libkiki.rpc.server.RpcServer`). :func:`serve_stream` owns the accept loop and every
connection's task in one ``TaskGroup``, so leaving it (the service draining) stops accepting,
lets live connections finish within the runner's drain bound, and cancels whatever is left. A
connection over ``max_connections`` gets the protocol's own rejection (``reject``) and is
closed; nobody else notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

log = logging.getLogger(__name__)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Rejection = Callable[[], bytes]

STREAM_LIMIT = 1 << 16
# Running out of descriptors or memory is transient: back off instead of spinning on accept().
ACCEPT_BACKOFF = 0.1
# Out of descriptors or memory: what accept() and identifying its peer wait out.
SHORTAGE = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_TRANSIENT = SHORTAGE | {errno.ECONNABORTED}


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
        counters["connections_accepted"] += 1
        on_accept(conn)


async def _run_connection(
    handler: Handler,
    conn: socket.socket,
    live: dict[asyncio.StreamWriter, asyncio.StreamReader],
    counters: Counter[str],
) -> None:
    reader, writer = await asyncio.open_connection(sock=conn, limit=STREAM_LIMIT)
    live[writer] = reader
    counters["connections"] += 1
    try:
        await handler(reader, writer)
    except (ConnectionError, BrokenPipeError):
        counters["disconnects"] += 1  # the peer went away mid-conversation: its loss only
    except Exception:
        counters["handler_errors"] += 1
        log.exception("connection handler failed")
    finally:
        live.pop(writer, None)
        writer.close()
        with contextlib.suppress(ConnectionError, BrokenPipeError):
            await writer.wait_closed()


async def _reject(conn: socket.socket, reply: bytes) -> None:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(1):
            await loop.sock_sendall(conn, reply)
    except (OSError, TimeoutError):
        pass
    finally:
        conn.close()


@contextlib.asynccontextmanager
async def serve_stream(
    listener: socket.socket,
    handler: Handler,
    *,
    max_connections: int,
    reject: Rejection,
    counters: Counter[str],
) -> AsyncIterator[dict[asyncio.StreamWriter, asyncio.StreamReader]]:
    """Serve ``listener`` until the block exits; yields the set of live connections."""
    live: dict[asyncio.StreamWriter, asyncio.StreamReader] = {}

    async with asyncio.TaskGroup() as tg:

        def on_accept(conn: socket.socket) -> None:
            if len(live) >= max_connections:
                counters["rejected_connections"] += 1
                log.warning("connection limit (%d) reached; rejecting a client", max_connections)
                tg.create_task(_reject(conn, reject()))
                return
            tg.create_task(_run_connection(handler, conn, live, counters))

        acceptor = tg.create_task(accept_forever(listener, on_accept, counters))
        try:
            yield live
        finally:
            acceptor.cancel()
            # Draining: stop reading, and let each handler see end-of-input so it finishes the
            # requests it already has, writes their answers and closes.
            for writer, reader in list(live.items()):
                transport = writer.transport
                if isinstance(transport, asyncio.ReadTransport):
                    transport.pause_reading()
                reader.feed_eof()
