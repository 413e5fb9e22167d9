"""``kiki mcp``: the broker as an MCP server on stdio, for hosts that launch servers.

MCP's stdio transport is newline-delimited JSON-RPC, exactly what the broker speaks on its
socket, so the bridge moves the bytes unchanged both ways: the broker sees the bridge's own
credentials (the host's user), and every check happens in the broker.

The bridge reads the messages as they pass for one thing only: the ids of the requests the host
sent, so that it knows which are still unanswered. When the host closes stdin (a script that
writes its requests and then waits for the output, say), the bridge stops reading stdin but keeps
the socket open until every forwarded request is answered or ``--drain-timeout`` seconds pass,
then closes it. It never half-closes the socket: the broker takes end of input for the caller
leaving and cancels its calls.

Each direction is a thread doing blocking reads and writes: a call costs the bridge a read and a
write each way and no event loop (which would add a wait for readiness, and callbacks, to every
message on the host's critical path). Blocking I/O also serves any file as stdin and stdout, not
only the pipes a host gives: a regular file, /dev/null, a terminal, a socket (``kiki mcp <
requests.jsonl > answers.jsonl``), and each side goes only as fast as the other takes it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import socket
import sys
import threading
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
        description="Bridge an MCP host (which launches servers as subprocesses and speaks "
        "JSON-RPC on their stdin/stdout) to the tool broker's socket. When stdin closes, the "
        "answers still owed to the host are written before the bridge exits.",
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

    The thread forwarding the host's bytes only notes them (:meth:`forwarded`) before they go
    to the broker, and looks into them (:meth:`catch_up`) once they are gone, so that reading
    the ids never delays a request. Whoever counts an answer catches up first: a request is
    always counted before its answer, whichever thread gets there first. Once ``awaited`` is
    set, ``changed`` is notified when no request is left unanswered; before, nobody waits for
    that, and waking the waiting thread at every answer would cost each call a thread switch.
    """

    def __init__(self, changed: threading.Condition) -> None:
        self._ids: Counter[bytes] = Counter()  # a multiset: a reused id is answered twice
        self._unread: list[bytes] = []  # forwarded, not yet looked into
        self._lines = LineDecoder(HOST_LINE)
        self.changed = changed  # re-entrant: its holder may ask len()
        self.awaited = False

    def __len__(self) -> int:
        with self.changed:
            self.catch_up()
            return self._ids.total()

    def forwarded(self, chunk: bytes) -> None:
        """Note bytes of the host's about to go to the broker (any piece of its stream)."""
        with self.changed:
            self._unread.append(chunk)

    def catch_up(self) -> None:
        """Count the requests in the bytes forwarded so far."""
        with self.changed:
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
        entries = _entries(line)  # parsed outside the lock: the other thread may want it
        with self.changed:
            self.catch_up()
            for msg in entries:
                if isinstance(msg, dict) and "method" not in msg and "id" in msg:
                    with contextlib.suppress(TypeError):  # an id orjson cannot write back
                        self._drop(_key(msg["id"]))

    def _drop(self, key: bytes) -> None:
        count = self._ids.pop(key, 0)
        if count > 1:
            self._ids[key] = count - 1
        if self.awaited and not self._ids:
            self.changed.notify_all()


def _read(fd: int) -> bytes:
    """A chunk of at most CHUNK bytes from ``fd``, b"" at its end, waiting for it if need be.

    stdin is opened blocking by whoever starts the bridge, but a host may share it set
    non-blocking (the flag belongs to the open file, not to the bridge): then wait for it here.
    """
    while True:
        try:
            return os.read(fd, CHUNK)
        except BlockingIOError:
            _wait(fd, select.POLLIN)


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data``: a write may take only part of it (a signal, a disk filling up, a
    non-blocking pipe that is full)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            _wait(fd, select.POLLOUT)


def _wait(fd: int, event: int) -> None:
    poller = select.poll()
    poller.register(fd, event)
    poller.poll()


class _Pump:
    """The two directions of one bridge, each run by a thread, and what the main thread waits on."""

    def __init__(self, sock: socket.socket, stdin: int, stdout: int) -> None:
        self.sock = sock
        self.stdin = stdin
        self.stdout = stdout
        self.changed = threading.Condition(threading.RLock())
        self.outstanding = Outstanding(self.changed)
        self.host_done = False  # stdin has ended (or could not be read, or the socket broke)
        self.broker_done = False  # the broker's side has ended, or stdout cannot be written
        self.failed: list[str] = []  # why the host's side broke (said once the bridge is down)

    def to_broker(self) -> None:
        last = b"\n"
        try:
            while chunk := _read(self.stdin):
                self.outstanding.forwarded(chunk)
                self.sock.sendall(chunk)
                self.outstanding.catch_up()  # while the broker works on the request
                last = chunk
            if not last.endswith(b"\n"):
                # The host's last message had no newline: end it, or the broker never reads it.
                self.outstanding.forwarded(b"\n")
                self.sock.sendall(b"\n")
        except OSError:
            pass  # stdin cannot be read, or the broker is gone: either way no more requests
        finally:
            self._end("host_done")

    def to_host(self) -> None:
        lines = LineDecoder(BROKER_LINE)
        # Waited for with poll, not in recv: a blocking recv sleeps on the socket's one wait
        # queue, and wakes (to sleep again) whenever the broker takes a request from it too,
        # which would cost every call an extra thread switch. poll wakes for answers only.
        answers = select.poll()
        answers.register(self.sock, select.POLLIN)
        try:
            while answers.poll() and (chunk := self.sock.recv(CHUNK)):
                try:
                    _write_all(self.stdout, chunk)
                except ConnectionError:
                    return  # the host closed its end: there is nobody left to tell
                except OSError as exc:  # a full disk, say: answers would be lost without a word
                    self.failed.append(f"cannot write to stdout: {exc.strerror or exc}")
                    return
                # Only once the host has it does an answer count as delivered.
                for line in lines.feed(chunk):
                    if isinstance(line, bytes):
                        self.outstanding.answered(line)
        except OSError:
            pass  # the socket broke, or was shut down as the bridge stops
        finally:
            self._end("broker_done")

    def _end(self, side: str) -> None:
        with self.changed:
            setattr(self, side, True)
            self.changed.notify_all()

    def wait(self, drain_timeout: float) -> None:
        """Until the broker's side ends, or stdin does and the answers owed are written (or
        ``drain_timeout`` seconds pass)."""
        with self.changed:
            self.changed.wait_for(lambda: self.host_done or self.broker_done)
            if self.broker_done:
                return
            # The host closed stdin: deliver what is owed, within the grace time. No
            # shutdown(SHUT_WR): the broker would take it for the host leaving and cancel the
            # calls.
            self.outstanding.awaited = True
            self.changed.wait_for(
                lambda: self.broker_done or not len(self.outstanding), timeout=drain_timeout
            )
            owed = len(self.outstanding)
            if owed and not self.broker_done:
                print(
                    f"kiki mcp: stdin closed; {owed} request(s) still unanswered "
                    f"after {drain_timeout:g} s, giving up",
                    file=sys.stderr,
                )


def bridge(path: Path, drain_timeout: float = DRAIN_TIMEOUT) -> int:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        print(
            f"kiki mcp: cannot reach the tool broker at {path}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    pump = _Pump(sock, sys.stdin.fileno(), sys.stdout.fileno())
    # Daemon threads: a read of stdin still in flight when the bridge stops (the broker went
    # away while the host keeps stdin open) must not hold up its exit.
    for target in (pump.to_broker, pump.to_host):
        threading.Thread(target=target, name=target.__name__, daemon=True).start()
    try:
        pump.wait(drain_timeout)
    finally:
        # Wakes the thread reading the socket, if it still is; the broker sees the caller leave.
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    if pump.failed:
        print(f"kiki mcp: {pump.failed[0]}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    path = args.socket or socket_path(TOOLS_SOCKET)
    try:
        return bridge(path, args.drain_timeout)
    except KeyboardInterrupt:
        return 0
