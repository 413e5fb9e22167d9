"""Serving JSON-RPC on a listening Unix socket, and connecting to one.

::

    async with serve_unix(listener, methods, max_connections=64) as server:
        ...                                  # server.counters, server.connections
    # leaving: stop accepting, let in-flight requests finish (bounded), close the rest

    async with connect_unix(path) as conn:
        await conn.request("ping")

Every accepted peer is identified by ``SO_PEERCRED`` before anything is read from it, and
admitted or refused at ``accept()`` by :class:`libkiki.servers.Gate` (in total and per user; see
:mod:`libkiki.admission`). A refused peer reads one ``LimitExceeded`` error line (id null) and is
closed; nobody else notices.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Self

from libkiki.admission import AdmissionLimits, Ticket
from libkiki.errors import Unavailable
from libkiki.framing import DEFAULT_MAX_LINE
from libkiki.peer import identify, peer_cred
from libkiki.rpc.connection import DEFAULT_MAX_IN_FLIGHT, DEFAULT_REQUEST_TIMEOUT, Connection
from libkiki.rpc.messages import error_line
from libkiki.rpc.methods import Handler, Methods
from libkiki.servers import Gate, accept_forever

__all__ = ["ConnectionHook", "RpcServer", "connect_unix", "serve_unix"]

log = logging.getLogger(__name__)

ConnectionHook = Callable[[Connection], Awaitable[None]]

DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_DRAIN_TIMEOUT = 5.0


class RpcServer:
    """Accepts connections on ``sock`` while entered; see :func:`serve_unix`."""

    def __init__(
        self,
        sock: socket.socket,
        methods: Methods | Mapping[str, Handler],
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_connections_per_user: int | None = None,
        max_line: int = DEFAULT_MAX_LINE,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        on_connect: ConnectionHook | None = None,
        on_disconnect: ConnectionHook | None = None,
        counters: Counter[str] | None = None,
    ) -> None:
        self.sock = sock
        self.methods = Methods.of(methods)
        self.max_connections = max_connections
        self.max_line = max_line
        self.max_in_flight = max_in_flight
        self.request_timeout = request_timeout
        self.drain_timeout = drain_timeout
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.counters: Counter[str] = Counter() if counters is None else counters
        self.connections: set[Connection] = set()
        limits = AdmissionLimits.of(max_connections, max_connections_per_user, os.getuid())
        self.gate = Gate(limits, error_line, self.counters, _name(sock))
        self._tg: asyncio.TaskGroup | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._setting_up: set[asyncio.Task[None]] = set()  # accepted, not yet in connections
        self._stopping = False

    async def __aenter__(self) -> Self:
        self.sock.setblocking(False)
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        self._accepting = self._tg.create_task(self._accept_loop(), name="rpc-accept")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._tg is not None
        assert self._accepting is not None
        try:
            self._stopping = True
            self._accepting.cancel()
            self.gate.close()
            for task in self._setting_up:
                task.cancel()
            if self.connections:
                async with asyncio.TaskGroup() as closing:
                    for conn in list(self.connections):
                        closing.create_task(conn.close(self.drain_timeout))
        finally:
            await self._tg.__aexit__(et, exc, tb)

    async def _accept_loop(self) -> None:
        await accept_forever(self.sock, self._admit, self.counters)

    def _admit(self, conn_sock: socket.socket) -> None:
        assert self._tg is not None
        ticket = self.gate.admit(conn_sock, self._tg)
        if ticket is None:
            return
        task = self.gate.start(
            self._tg, conn_sock, ticket, self._serve(conn_sock, ticket), name="rpc-connection"
        )
        self._setting_up.add(task)
        task.add_done_callback(self._setting_up.discard)

    async def _serve(self, conn_sock: socket.socket, ticket: Ticket) -> None:
        try:
            try:
                peer = await identify(conn_sock)
            except OSError as exc:
                log.info("dropping a connection whose identity cannot be read: %s", exc)
                conn_sock.close()
                return
            self._setting_up.discard(asyncio.current_task())
            async with Connection(
                conn_sock,
                peer=peer,
                methods=self.methods,
                max_line=self.max_line,
                max_in_flight=self.max_in_flight,
                request_timeout=self.request_timeout,
                counters=self.counters,
            ) as conn:
                if self._stopping:
                    return
                self.connections.add(conn)
                log.debug("%s: connected", conn.name)
                try:
                    if self.on_connect is not None:
                        await self.on_connect(conn)
                    await conn.wait_closed()
                finally:
                    self.connections.discard(conn)
                    if self.on_disconnect is not None:
                        await self.on_disconnect(conn)
        except Exception:
            # A failing hook ends its own connection only.
            log.exception("connection handler failed")
        finally:
            self.gate.release(ticket)


def serve_unix(
    sock: socket.socket,
    methods: Methods | Mapping[str, Handler],
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    max_connections_per_user: int | None = None,
    max_line: int = DEFAULT_MAX_LINE,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    on_connect: ConnectionHook | None = None,
    on_disconnect: ConnectionHook | None = None,
    counters: Counter[str] | None = None,
) -> RpcServer:
    """Serve ``methods`` on an already listening socket (it stays open: the caller owns it).

    ``on_connect`` is awaited for each peer once its connection is up; the connection's reader
    first runs at ``on_connect``'s first suspension, so state it sets before awaiting anything is
    in place before the first request. Raising from it ends that connection (logged).
    ``on_disconnect`` is awaited when the connection ends. ``counters`` (e.g. the service's
    own) receives ``requests``, ``notifications``, ``errors`` and the connection counters of
    :mod:`libkiki.admission`. ``max_connections_per_user`` defaults to a quarter of
    ``max_connections``; root and the server's own uid are held only to the total.
    """
    return RpcServer(
        sock,
        methods,
        max_connections=max_connections,
        max_connections_per_user=max_connections_per_user,
        max_line=max_line,
        max_in_flight=max_in_flight,
        request_timeout=request_timeout,
        drain_timeout=drain_timeout,
        on_connect=on_connect,
        on_disconnect=on_disconnect,
        counters=counters,
    )


def _name(sock: socket.socket) -> str:
    try:
        name = sock.getsockname()
    except OSError:
        return "socket"
    return os.path.basename(name) if isinstance(name, str) and name else "socket"


@asynccontextmanager
async def connect_unix(
    path: str | os.PathLike[str],
    methods: Methods | Mapping[str, Handler] | None = None,
    *,
    max_line: int = DEFAULT_MAX_LINE,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
) -> AsyncIterator[Connection]:
    """Connect to a JSON-RPC Unix socket; ``methods`` serves the requests the other end sends."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, os.fspath(path))
        peer = peer_cred(sock, app=False)  # the server's app id is of no use here
    except OSError as exc:
        sock.close()
        raise Unavailable(f"cannot connect to {os.fspath(path)}: {exc.strerror or exc}") from exc
    except BaseException:
        sock.close()
        raise
    async with Connection(
        sock,
        peer=peer,
        methods=methods,
        max_line=max_line,
        max_in_flight=max_in_flight,
        request_timeout=request_timeout,
    ) as conn:
        yield conn
