"""``kiki mcp``: the broker as an MCP server on stdio, for hosts that launch servers.

MCP's stdio transport is newline-delimited JSON-RPC, exactly what the broker speaks on its
socket. When the host gives pipes (as hosts do), ``kiki mcp`` hands them to the broker over its
socket (``SCM_RIGHTS``, see ``kiki_tool_broker.stdio``), opened anew so that the broker's
non-blocking flag stays off the host's own open files, and the broker serves the host on them
directly: no process between them. ``kiki mcp`` then only waits for the broker to finish with
them, says why on stderr if it did not finish well (the broker went away, or stopped, or
answers were still owed after ``--drain-timeout``), and exits. The broker sees ``kiki mcp``'s
own credentials (the host's user) on the handing connection, as when relaying.

Anything else (a file, a terminal, a socket, /dev/null), a broker that refuses the pipes (an
older one, or one with all its sessions taken), or ``--relay``: the bridge relays the bytes
unchanged both ways itself, on the same connection.

The relay reads the messages as they pass for one thing only: the ids of the requests the host
sent, so that it knows which are still unanswered. When the host closes stdin (a script that
writes its requests and then waits for the output, say), the relay stops reading stdin but keeps
the socket open until every forwarded request is answered or ``--drain-timeout`` seconds pass,
then closes it. It never half-closes the socket: the broker takes end of input for the caller
leaving and cancels its calls. (The broker serving the pipes itself does the same waiting.)

One thread waits on stdin and the socket with poll and passes each message on as it comes: a
call costs the relay a read and a write each way, and no event loop's callbacks, futures and
tasks (which cost a Python relay more than the copying). Blocking writes to stdout and poll
also serve any file as stdin and stdout, not only the pipes a host gives: a regular file,
/dev/null, a terminal, a socket (``kiki mcp < requests.jsonl > answers.jsonl``), and each side
goes only as fast as the other takes it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import socket
import stat
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from libkiki.framing import DEFAULT_MAX_LINE, LineDecoder
from libkiki.paths import TOOLS_SOCKET, socket_path
from libkiki.rpc.messages import CANCELLED, valid_id

CHUNK = 1 << 16
# A little over the broker's default call timeout (30 s), so that a call that times out there
# still gets its error back to the host.
DRAIN_TIMEOUT = 35.0
# Lines the bridge looks into. From the host: the broker's own limit (it refuses longer lines,
# answering with a null id). From the broker: room for an answer that wraps a provider's 1 MiB
# result twice (structuredContent and its text copy). Longer lines still pass, unread.
HOST_LINE = DEFAULT_MAX_LINE
BROKER_LINE = 16 << 20
# Requests the broker answers only when the connection closes: never waited for.
LISTEN = "subscriptions/listen"
# Handing the pipes over: kiki_tool_broker.protocol's names (the CLI cannot import the broker).
SERVE_STDIO = "kiki/serveStdio"
STDIO_SEND = "kiki/serveStdio/send"
STDIO_STARTED = "kiki/serveStdio/started"
HANDOVER_ID = "kiki-mcp"


def _drain_timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError("must be 0 or more seconds")
    return value


def register(sub: Any) -> None:
    p = sub.add_parser(
        "mcp",
        help="serve the device's tools over MCP on stdin/stdout",
        description="Connect an MCP host (which launches servers as subprocesses and speaks "
        "JSON-RPC on their stdin/stdout) to the tool broker: pipes are handed to the broker, "
        "which serves them itself; anything else is relayed to its socket. When stdin closes, "
        "the answers still owed to the host are written before kiki mcp exits.",
    )
    p.add_argument(
        "--socket",
        type=Path,
        help="the broker's socket (default: tools.sock in the runtime directory)",
    )
    p.add_argument(
        "--drain-timeout",
        type=_drain_timeout,
        default=DRAIN_TIMEOUT,
        metavar="SECONDS",
        help="after stdin closes, how long to wait for answers to the requests already "
        f"forwarded before exiting (default {DRAIN_TIMEOUT:g}; 0 exits at once)",
    )
    p.add_argument(
        "--relay",
        action="store_true",
        help="relay stdin and stdout to the broker's socket through this process, even when "
        "they are pipes the broker could serve itself",
    )
    p.set_defaults(func=run)


def _entries(line: bytes) -> list[Any]:
    """The messages of one line: its object, the entries of a batch, or none (not JSON)."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return []
    return value if isinstance(value, list) else [value]


def _key(rid: Any) -> bytes:
    # 1 and 1.0 are the same id to the broker (a cancellation of either reaches the request).
    if isinstance(rid, float) and rid.is_integer():
        rid = int(rid)
    return orjson.dumps(rid)


class Outstanding:
    """The requests forwarded from the host that the broker has not answered yet, by id.

    It mirrors what the broker answers: every message with a ``method`` and an ``id`` (an
    invalid one too, when its id is valid: the error echoes it), except a listen stream, which
    is answered only at close, and a request the host cancelled, which is never answered.

    The host's bytes are only noted (:meth:`forwarded`) as they are read, and looked into
    (:meth:`catch_up`) once they are on their way to the broker, so that reading the ids never
    delays a request. Counting an answer, or the requests owed, catches up first: a request is
    always counted before its answer.
    """

    def __init__(self) -> None:
        self._ids: Counter[bytes] = Counter()  # a multiset: a reused id is answered twice
        self._unread: list[bytes] = []  # forwarded, not yet looked into
        self._lines = LineDecoder(HOST_LINE)

    def __len__(self) -> int:
        self.catch_up()
        return self._ids.total()

    def forwarded(self, chunk: bytes) -> None:
        """Note bytes of the host's on their way to the broker (any piece of its stream)."""
        self._unread.append(chunk)

    def catch_up(self) -> None:
        """Count the requests in the bytes forwarded so far."""
        unread, self._unread = self._unread, []
        for chunk in unread:
            for line in self._lines.feed(chunk):
                if isinstance(line, bytes):
                    self._sent(line)

    def _sent(self, line: bytes) -> None:
        for msg in _entries(line):
            if not isinstance(msg, dict) or "method" not in msg:
                continue
            if "id" in msg:
                if valid_id(msg["id"]) and msg["method"] != LISTEN:
                    self._ids[_key(msg["id"])] += 1
            elif msg["method"] == CANCELLED:
                params = msg.get("params")
                if isinstance(params, dict) and valid_id(params.get("requestId")):
                    self._drop(_key(params["requestId"]))

    def answered(self, line: bytes) -> None:
        """Count the answers in one line the host has been given."""
        self.catch_up()
        for msg in _entries(line):
            if isinstance(msg, dict) and "method" not in msg and "id" in msg:
                with contextlib.suppress(TypeError):  # an id orjson cannot write back
                    self._drop(_key(msg["id"]))

    def _drop(self, key: bytes) -> None:
        count = self._ids.pop(key, 0)
        if count > 1:
            self._ids[key] = count - 1


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to the host: a write may take only part of it (a signal, a disk
    filling up), and a host may share its end of a pipe set non-blocking (the flag belongs to
    the open file, not to the bridge): then wait until it takes more."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            waiting = select.poll()
            waiting.register(fd, select.POLLOUT)
            waiting.poll()


class _Pump:
    """One bridge: the host's stdin and stdout, the broker's socket, and one loop between them.

    One thread waits on both inputs with poll and does the work of each message as it comes:
    a read and a write each way per call. The requests wait in ``pending`` only when the
    broker's socket is full, and stdin is not read until they are sent, so that the host goes
    only as fast as the broker takes its requests. The answers are written to stdout before the
    next is read (blocking, as the host gave stdout), so that the host's pace bounds what the
    bridge holds and an answer counts as delivered once it is written.
    """

    def __init__(self, sock: socket.socket, stdin: int, stdout: int) -> None:
        self.sock = sock
        self.stdin = stdin
        self.stdout = stdout
        self.outstanding = Outstanding()
        self.answers = LineDecoder(BROKER_LINE)
        self.pending = b""  # the host's bytes the broker's socket has not taken yet
        self.host_open = True
        self.last = b"\n"  # the end of the host's bytes so far
        self.failed: list[str] = []  # why the host's side broke (said once the bridge is down)
        self.broker_gone = False  # the broker closed the connection first
        self.poller = select.poll()
        self.watching_stdin = False

    def run(self, drain_timeout: float) -> None:
        """Until the broker's side ends, or stdin does and the answers owed are written (or
        ``drain_timeout`` seconds pass)."""
        sock = self.sock.fileno()
        self.poller.register(sock, select.POLLIN)
        self._watch_stdin(True)
        deadline: float | None = None
        while True:
            if not self.host_open:
                if deadline is None:
                    deadline = time.monotonic() + drain_timeout
                if not self.pending and not len(self.outstanding):
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    self._give_up(drain_timeout)
                    return
                timeout: float | None = left * 1000
            else:
                timeout = None
            for fd, events in self.poller.poll(timeout):
                if fd == sock:
                    if events & select.POLLOUT:
                        self._send()
                    if events & ~select.POLLOUT and not self._answer():
                        return
                elif self.watching_stdin:
                    self._request()

    def _request(self) -> None:
        try:
            chunk = os.read(self.stdin, CHUNK)
        except BlockingIOError:
            return  # a host's non-blocking stdin that had nothing after all
        except OSError:
            chunk = b""  # stdin cannot be read: no more requests either way
        if chunk:
            self.last = chunk
        else:
            self._host_ended()
            if self.last.endswith(b"\n"):
                return
            # The host's last message had no newline: end it, or the broker never reads it.
            chunk = b"\n"
        self.outstanding.forwarded(chunk)
        self.pending = chunk
        self._send()
        self.outstanding.catch_up()  # while the broker works on the request

    def _send(self) -> None:
        """Send what the broker has not taken yet; stdin is watched only while nothing is."""
        try:
            sent = self.sock.send(self.pending)
        except BlockingIOError:
            sent = 0
        except OSError:
            # The broker is gone: no more requests, but its answers so far are still read.
            sent = len(self.pending)
            self._host_ended()
        self.pending = self.pending[sent:]
        if self.pending:
            self.poller.modify(self.sock, select.POLLIN | select.POLLOUT)
        else:
            self.poller.modify(self.sock, select.POLLIN)
        self._watch_stdin(self.host_open and not self.pending)

    def _host_ended(self) -> None:
        # No shutdown(SHUT_WR): the broker would take it for the host leaving and cancel the
        # calls still owed.
        self.host_open = False
        self._watch_stdin(False)

    def _watch_stdin(self, watch: bool) -> None:
        # Unregistered, not only masked, while not wanted: poll reports a hang-up even then.
        if watch != self.watching_stdin:
            if watch:
                self.poller.register(self.stdin, select.POLLIN)
            else:
                self.poller.unregister(self.stdin)
            self.watching_stdin = watch

    def _answer(self) -> bool:
        """Pass on what the broker sent; False once there is nothing more to pass on."""
        try:
            chunk = self.sock.recv(CHUNK)
        except BlockingIOError:
            return True
        except OSError:
            chunk = b""
        if not chunk:
            self.broker_gone = True
            return False
        try:
            _write_all(self.stdout, chunk)
        except ConnectionError:
            return False  # the host closed its end: there is nobody left to tell
        except OSError as exc:  # a full disk, say: answers would be lost without a word
            self.failed.append(f"cannot write to stdout: {exc.strerror or exc}")
            return False
        for line in self.answers.feed(chunk):
            if isinstance(line, bytes):
                self.outstanding.answered(line)
        return True

    def _give_up(self, drain_timeout: float) -> None:
        owed = len(self.outstanding)
        if owed:
            print(
                f"kiki mcp: stdin closed; {owed} request(s) still unanswered "
                f"after {drain_timeout:g} s, giving up",
                file=sys.stderr,
            )


def _pipes(stdin: int, stdout: int) -> bool:
    """Whether the host gave two pipes (what the broker takes), not one and the same."""
    try:
        given = os.fstat(stdin), os.fstat(stdout)
    except OSError:
        return False
    if not all(stat.S_ISFIFO(info.st_mode) for info in given):
        return False
    return (given[0].st_dev, given[0].st_ino) != (given[1].st_dev, given[1].st_ino)


def _private(stdin: int, stdout: int) -> tuple[int, int] | None:
    """The host's pipes opened anew (``/proc/self/fd``), for the broker: new open file
    descriptions of the same pipes, so that the broker setting them non-blocking leaves the
    host's own (shared with whoever else holds them, a shell say) as they were. None when they
    cannot be opened so (no /proc, stdout's reader gone): then they are relayed."""
    try:
        reading = os.open(f"/proc/self/fd/{stdin}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        writing = os.open(f"/proc/self/fd/{stdout}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        os.close(reading)
        return None
    return reading, writing


def _let_go(*fds: int) -> None:
    """The broker serves these now: point them at /dev/null, so that the broker's close of the
    host's stdout is the end the host sees, and nothing here reads or writes them."""
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for fd in fds:
            os.dup2(null, fd)
    finally:
        os.close(null)


def _handover_outcome(result: Any, drain_timeout: float) -> int:
    """The exit status for the broker's account of a session, said on stderr when not 0."""
    if not isinstance(result, dict):
        result = {}
    if result.get("failed"):
        print(f"kiki mcp: {result['failed']}", file=sys.stderr)
        return 1
    if result.get("stopped"):
        print("kiki mcp: the tool broker stopped", file=sys.stderr)
        return 1
    owed = result.get("unanswered")
    if isinstance(owed, int) and owed > 0:
        print(
            f"kiki mcp: stdin closed; {owed} request(s) still unanswered "
            f"after {drain_timeout:g} s, giving up",
            file=sys.stderr,
        )
    return 0


def hand_over(
    sock: socket.socket, stdin: int, stdout: int, drain_timeout: float, given: tuple[int, int]
) -> int | None:
    """Hand the host's pipes to the broker on ``sock`` (blocking) and wait until it is done
    with them: the exit status, or None when the broker refused them before taking them (an
    older broker, its sessions all taken): the pipes are still ours then, to relay.
    ``given`` is what is passed: :func:`_private` descriptions of ``stdin`` and ``stdout``."""
    request = {
        "jsonrpc": "2.0",
        "id": HANDOVER_ID,
        "method": SERVE_STDIO,
        "params": {"drainTimeout": drain_timeout},
    }
    sock.sendall(orjson.dumps(request) + b"\n")
    lines = LineDecoder(BROKER_LINE)
    started = False
    while chunk := sock.recv(CHUNK):
        for line in lines.feed(chunk):
            for msg in _entries(line) if isinstance(line, bytes) else []:
                if not isinstance(msg, dict):
                    continue
                method = msg.get("method")
                if method == STDIO_SEND:
                    socket.send_fds(sock, [b"\n"], list(given))
                elif method == STDIO_STARTED:
                    started = True
                    _let_go(stdin, stdout)
                elif method is None and msg.get("id") == HANDOVER_ID:
                    if "result" in msg:
                        return _handover_outcome(msg["result"], drain_timeout)
                    if not started:
                        return None
                    error = msg.get("error")
                    why = error.get("message") if isinstance(error, dict) else None
                    print(f"kiki mcp: the tool broker failed: {why}", file=sys.stderr)
                    return 1
    if not started:
        # Gone before it took the pipes: relaying to it would find it gone too.
        print("kiki mcp: the tool broker closed the connection", file=sys.stderr)
        return 1
    print("kiki mcp: the tool broker went away", file=sys.stderr)
    return 1


def bridge(path: Path, drain_timeout: float = DRAIN_TIMEOUT, relay: bool = False) -> int:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        print(
            f"kiki mcp: cannot reach the tool broker at {path}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    with sock:
        given = _private(stdin, stdout) if not relay and _pipes(stdin, stdout) else None
        if given is not None:
            try:
                status = hand_over(sock, stdin, stdout, drain_timeout, given)
            except OSError as exc:
                print(f"kiki mcp: lost the tool broker: {exc.strerror or exc}", file=sys.stderr)
                return 1
            finally:
                for fd in given:
                    os.close(fd)
            if status is not None:
                return status
        sock.setblocking(False)
        pump = _Pump(sock, stdin, stdout)
        pump.run(drain_timeout)
    if pump.failed:
        print(f"kiki mcp: {pump.failed[0]}", file=sys.stderr)
        return 1
    if pump.broker_gone and (pump.host_open or len(pump.outstanding)):
        # As when the broker serves the pipes: the host is told its server went away (a broker
        # stopping past its drain_timeout cuts the calls still in flight).
        owed = len(pump.outstanding)
        unanswered = f"; {owed} request(s) unanswered" if owed else ""
        print(f"kiki mcp: the tool broker went away{unanswered}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    path = args.socket or socket_path(TOOLS_SOCKET)
    try:
        return bridge(path, args.drain_timeout, args.relay)
    except KeyboardInterrupt:
        return 0
