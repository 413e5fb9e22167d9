"""MCP on a host's own pipes: ``kiki mcp`` hands its stdin and stdout to the broker.

An MCP host launches ``kiki mcp`` and speaks to it on pipes. Relaying those bytes to the socket
costs a process hop each way per message, so ``kiki mcp`` passes the pipes themselves
(``SCM_RIGHTS``) and the broker serves the host on them, as one more connection with the same
method table. The exchange on the handing connection (an ordinary connection to tools.sock):

1. ``kiki mcp`` asks ``kiki/serveStdio {drainTimeout}``;
2. the broker stops reading that connection and sends ``kiki/serveStdio/send``;
3. ``kiki mcp`` sends one newline carrying two descriptors, stdin then stdout (its pipes
   opened anew: the broker sets them non-blocking, which must not reach the host's own);
4. the broker checks them (two pipes: one it can read, one it can write), reads the connection
   again, sends ``kiki/serveStdio/started`` and serves the host on the pipes;
5. the session ends: the host closed stdin and its answers are taken by its stdout pipe (or
   ``drainTimeout`` seconds passed: ``unanswered`` counts what was still owed, listen streams
   aside, and the answers dropped unwritten), the host closed stdout, or the broker stops
   (``stopped``). The answer to step 1 says which.

Who the host is: the handing connection's peer, by its ``SO_PEERCRED`` at connect, exactly as
if it had sent the requests itself (as the relaying ``kiki mcp`` did). Passing descriptors gives
the broker nothing the peer did not already hold. The session lasts only as long as the
handing connection: if ``kiki mcp`` goes away, so does the session.

Descriptors arrive only at step 3, the one read that asks for them: on every other read the
kernel discards (closes) any a peer attaches, so they cannot pile up in the broker. Sessions are
bounded (``max_stdio_sessions``), and each holds its handing connection, so the connection
limits (per user, in total) hold too. A refusal at any step before 4 leaves ``kiki mcp`` its
pipes: it then relays them itself.
"""

from __future__ import annotations

import asyncio
import fcntl
import math
import os
import stat
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Final

from kiki_tool_broker import protocol as mcp
from kiki_tool_broker.pipes import PipePair
from libkiki.errors import InvalidParams, InvalidRequest, LimitExceeded
from libkiki.rpc import Connection, Methods, RequestContext

# Seconds the peer has, once asked, to send its descriptors.
HANDOVER_TIMEOUT: Final = 5.0
# Seconds a session whose host closed stdin waits for its answers, unless the peer says: as
# kiki mcp's default, a little over the default call timeout.
DRAIN_TIMEOUT: Final = 35.0
# How often a session whose host closed stdin looks whether its answers are all written.
DRAIN_POLL: Final = 0.005
_EXPECTED: Final = "expected one newline carrying two descriptors, stdin then stdout"
_SESSION: Final = "stdio session"  # Connection.state key: this connection is a host's pipes

ConnectionHook = Callable[[Connection], Awaitable[None]]


class HostPipes:
    """The transport factory of a session's connection (libkiki's ``Connection(transport=)``):
    a :class:`PipePair` on the host's stdin and stdout, which it owns from then on.

    Everything above the transport is the connection every socket peer gets.
    ``on_input_end``: the host closed stdin.
    """

    def __init__(self, reading: int, writing: int, on_input_end: Callable[[], None]) -> None:
        self._fds = (reading, writing)
        self._on_input_end = on_input_end
        self._unused = True  # the descriptors are still ours to close
        self.pipes: PipePair | None = None

    def __call__(self, protocol: asyncio.BufferedProtocol) -> PipePair:
        reading, writing = self._fds
        try:
            self.pipes = PipePair(
                asyncio.get_running_loop(), reading, writing, protocol, self._on_input_end
            )
        except BaseException:
            self.close_unused()
            raise
        self._unused = False
        return self.pipes

    def close_unused(self) -> None:
        """Close the descriptors if no transport took them."""
        if self._unused:
            self._unused = False
            for fd in self._fds:
                os.close(fd)

    @property
    def failure(self) -> str | None:
        """Why the host's stdout could not be written (not its closing it), if it could not."""
        error = self.pipes.error if self.pipes is not None else None
        if error is None or isinstance(error, BrokenPipeError):
            return None
        return f"cannot write to stdout: {error.strerror or error}"


class StdioSessions:
    """The ``kiki/serveStdio`` method, and the sessions it runs (at most ``max_sessions``).

    ``methods`` is what every session is served (the broker's table); ``on_disconnect`` is
    awaited when a session ends, as for a socket connection; ``listening(conn)`` counts the
    listen streams open on a connection (answered only at its close: never waited for).
    """

    def __init__(
        self,
        *,
        max_sessions: int,
        connection_options: dict[str, Any],
        drain_timeout: float,
        counters: Counter[str],
        on_disconnect: ConnectionHook,
        listening: Callable[[Connection], int],
    ) -> None:
        self.max_sessions = max_sessions
        self.options = connection_options
        self.drain_timeout = drain_timeout
        self.counters = counters
        self.on_disconnect = on_disconnect
        self.listening = listening
        self.methods: Methods | None = None  # set once the broker's table exists
        self.open = 0  # sessions, counting those still being handed over

    def add_methods(self, methods: Methods) -> None:
        self.methods = methods
        methods.register(mcp.SERVE_STDIO, self.serve)

    async def serve(
        self, request: RequestContext, drainTimeout: Any = None
    ) -> dict[str, Any]:  # the wire's name
        drain = _seconds(drainTimeout)
        handing = request.connection
        if handing.state.get(_SESSION) or handing.state.get(mcp.SERVE_STDIO):
            raise InvalidRequest("this connection cannot hand over pipes (again)")
        if self.open >= self.max_sessions:
            self.counters["stdio_refused"] += 1
            raise LimitExceeded(
                f"too many stdio sessions (limit {self.max_sessions})",
                data={"limit": self.max_sessions},
            )
        handing.state[mcp.SERVE_STDIO] = True
        self.open += 1
        try:
            reading, writing = await _take_pipes(handing)
            ended = asyncio.Event()
            host = HostPipes(reading, writing, ended.set)
            try:
                session = Connection(
                    transport=host,
                    peer=request.peer,
                    methods=self.methods,
                    name=f"{request.peer.describe()} (stdio)",
                    counters=self.counters,
                    **self.options,
                )
                session.state[_SESSION] = True
                return await self._run(handing, session, host, ended, drain)
            finally:
                host.close_unused()
        finally:
            self.open -= 1

    async def _run(
        self,
        handing: Connection,
        session: Connection,
        host: HostPipes,
        ended: asyncio.Event,
        drain: float,
    ) -> dict[str, Any]:
        result: dict[str, Any] = {"unanswered": 0}
        # The broker stopping closes the handing connection with a grace: the session is given
        # the same. (kiki mcp leaving cancels this task instead: the session is closed at once.)
        stopping = asyncio.ensure_future(handing.wait_closing())
        gone = asyncio.ensure_future(session.wait_closed())
        input_end = asyncio.ensure_future(ended.wait())
        try:
            async with session:
                self.counters["stdio_sessions"] += 1  # started: served on the host's pipes
                await handing.notify(mcp.STDIO_STARTED)
                await asyncio.wait((stopping, gone, input_end), return_when=asyncio.FIRST_COMPLETED)
                if input_end.done() and not stopping.done():
                    deadline = asyncio.get_running_loop().time() + drain
                    result["unanswered"] = await self._drain(session, stopping, deadline)
                    # What close() writes (listen streams' answers) has what is left of the
                    # drain: answers cut off then are counted below, not lost quietly.
                    if host.pipes is not None:
                        host.pipes.flush_by(deadline)
                if stopping.done():
                    result["stopped"] = True
                    await session.close(self.drain_timeout)
        finally:
            for task in (stopping, gone, input_end):
                task.cancel()
            await self.on_disconnect(session)
        if host.pipes is not None:
            result["unanswered"] += host.pipes.undelivered
        if failure := host.failure:
            result["failed"] = failure
        return result

    async def _drain(
        self, session: Connection, stopping: asyncio.Future[None], deadline: float
    ) -> int:
        """Wait until every request the host sent is answered (listen streams aside: they are
        answered only at close) and every answer is taken by the host's stdout, or the loop's
        time reaches ``deadline``; how many were still owed then (answers still buffered are
        counted when the session ends, as dropped). The broker stopping ends the wait: it
        drains the session its own way."""
        loop = asyncio.get_running_loop()
        while not session.closed and not stopping.done():
            owed = max(session.in_flight - self.listening(session), 0)
            if owed == 0 and session.write_buffer_size == 0:
                return 0
            left = deadline - loop.time()
            if left <= 0:
                return owed
            await asyncio.sleep(min(DRAIN_POLL, left))
        return 0


def _seconds(value: object) -> float:
    if value is None:
        return DRAIN_TIMEOUT
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise InvalidParams("drainTimeout must be a number of seconds, 0 or more")
    return float(value)


# -- taking the descriptors ------------------------------------------------------------------


async def _take_pipes(handing: Connection) -> tuple[int, int]:
    """Ask the peer of ``handing`` for its pipes and take them off its socket: its reading is
    paused meanwhile, so that this is the one read of it that accepts descriptors."""
    handing.pause_reading()
    try:
        await handing.notify(mcp.STDIO_SEND)
        try:
            async with asyncio.timeout(HANDOVER_TIMEOUT):
                data, fds = await handing.receive_fds(2)
        except TimeoutError:
            raise InvalidRequest(
                f"no pipes were handed over within {HANDOVER_TIMEOUT:g} s"
            ) from None
        except InvalidRequest:  # more than two descriptors (all closed)
            raise InvalidRequest(_EXPECTED) from None
    finally:
        handing.resume_reading()
    try:
        if data != b"\n" or len(fds) != 2:
            raise InvalidRequest(_EXPECTED)
        _check(*fds)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds[0], fds[1]


def _check(reading: int, writing: int) -> None:
    """Two pipes, the first open for reading and the second for writing, not one and the same:
    a socket, a terminal or a file stays with ``kiki mcp``, which relays it."""
    seen = []
    for fd, name, use, modes in (
        (reading, "stdin", "reading", (os.O_RDONLY, os.O_RDWR)),
        (writing, "stdout", "writing", (os.O_WRONLY, os.O_RDWR)),
    ):
        info = os.fstat(fd)
        if not stat.S_ISFIFO(info.st_mode):
            raise InvalidParams(f"{name} is not a pipe")
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        if flags & os.O_PATH:  # its access mode reads O_RDONLY, yet it does no I/O at all
            raise InvalidParams(f"{name} is open for neither reading nor writing (O_PATH)")
        if flags & os.O_ACCMODE not in modes:
            raise InvalidParams(f"{name} is not open for {use}")
        seen.append((info.st_dev, info.st_ino))
    if seen[0] == seen[1]:
        raise InvalidParams("stdin and stdout are the same pipe")
