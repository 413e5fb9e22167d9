"""MCP on a host's own pipes (``kiki/serveStdio``), against the real broker, spoken raw: the
exchange that hands the pipes over, who the host is taken to be, and what the broker refuses
or never keeps (descriptors it did not ask for, ones that are not pipes, sessions over its
limit)."""

from __future__ import annotations

import contextlib
import os
import pwd
import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from kikitest.second_user import open_to_others, run_as
from libkiki.tools import ToolClient

pytestmark = pytest.mark.integration

Broker = tuple[Path, subprocess.Popen[bytes]]

SERVE = "kiki/serveStdio"
SEND = "kiki/serveStdio/send"
STARTED = "kiki/serveStdio/started"
GET_INFO = "dev.kiki.service.getInfo"
BOUND = 10.0  # seconds any one read may wait


class Wire:
    """A blocking connection to the broker that reads whole messages."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(BOUND)
        self.sock.connect(str(path))
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(orjson.dumps(message) + b"\n")

    def read(self) -> dict[str, Any] | None:
        """The next message, or None at the end."""
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        message: dict[str, Any] = orjson.loads(line)
        return message

    def ask(self, drain: float = 35.0) -> dict[str, Any] | None:
        """Ask to hand pipes over: None when told to send them, else the refusal."""
        self.send({"jsonrpc": "2.0", "id": "h", "method": SERVE, "params": {"drainTimeout": drain}})
        message = self.read()
        assert message is not None
        if message.get("method") == SEND:
            return None
        return message

    def hand(self, fds: list[int], data: bytes = b"\n") -> dict[str, Any]:
        """Send ``fds`` with ``data``; the broker's next message (started, or the refusal)."""
        socket.send_fds(self.sock, [data], fds)
        message = self.read()
        assert message is not None
        return message

    def result(self) -> dict[str, Any]:
        """The answer to the handover, once the session is over."""
        message = self.read()
        assert message is not None
        assert message.get("id") == "h", message
        answer: dict[str, Any] = message["result"]
        return answer


class Host:
    """The host's side of two pipes: it writes requests into one and reads answers from the
    other. ``given`` are the ends for the server: (stdin to read, stdout to write)."""

    def __init__(self) -> None:
        self.stdin_r, self.stdin_w = os.pipe()
        self.stdout_r, self.stdout_w = os.pipe()
        self.buffer = b""

    @property
    def given(self) -> list[int]:
        return [self.stdin_r, self.stdout_w]

    def let_go(self) -> None:
        """Close the server's ends here: the broker holds its own copies."""
        for fd in self.given:
            with contextlib.suppress(OSError):
                os.close(fd)

    def write(self, *messages: dict[str, Any]) -> None:
        os.write(self.stdin_w, b"".join(orjson.dumps(m) + b"\n" for m in messages))

    def end_input(self) -> None:
        os.close(self.stdin_w)

    def read(self) -> dict[str, Any] | None:
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([self.stdout_r], [], [], BOUND)
            assert ready, "no answer on the host's stdout"
            chunk = os.read(self.stdout_r, 1 << 16)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        message: dict[str, Any] = orjson.loads(line)
        return message

    def close(self) -> None:
        for fd in (self.stdin_r, self.stdin_w, self.stdout_r, self.stdout_w):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture
def host() -> Iterator[Host]:
    pipes = Host()
    yield pipes
    pipes.close()


def call(rid: Any, name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    params = {"name": name, "arguments": arguments or {}}
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}


def fds_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def baseline(path: Path, pid: int) -> int:
    """The broker's descriptors at rest, once its audit log is open (a first call opens it)."""
    gauges(path)
    return settled(pid, None)


def settled(pid: int, want: int | None) -> int:
    """The broker's descriptors once they stop changing (or reach ``want``): closing what a
    peer left is the broker's next turn, not the same instant."""
    deadline = time.monotonic() + BOUND
    last = fds_of(pid)
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = fds_of(pid)
        if now == want or (want is None and now == last):
            return now
        last = now
    return last


def gauges(path: Path) -> dict[str, Any]:
    wire = Wire(path)
    try:
        wire.send(call(1, GET_INFO))
        answer = wire.read()
        assert answer is not None
        counters: dict[str, Any] = answer["result"]["structuredContent"]["counters"]
        return counters
    finally:
        wire.close()


def test_a_host_is_served_on_its_own_pipes(broker: Broker, host: Host) -> None:
    path, proc = broker
    before = baseline(path, proc.pid)
    wire = Wire(path)
    assert wire.ask() is None
    assert wire.hand(host.given) == {"jsonrpc": "2.0", "method": STARTED}
    host.let_go()
    host.write({"jsonrpc": "2.0", "id": 1, "method": "ping"}, call(2, GET_INFO))
    assert host.read() == {"jsonrpc": "2.0", "id": 1, "result": {}}
    answer = host.read()
    assert answer is not None
    assert answer["id"] == 2
    counters = answer["result"]["structuredContent"]["counters"]
    assert counters["stdio_sessions_open"] == 1
    assert counters["stdio_sessions"] == 1
    # The host closes stdin: the session ends, its stdout with it, and the handing connection
    # is told how it went.
    host.end_input()
    assert host.read() is None
    assert wire.result() == {"unanswered": 0}
    wire.close()
    assert gauges(path)["stdio_sessions_open"] == 0
    assert settled(proc.pid, before) == before


def test_the_host_is_whoever_handed_the_pipes_over(
    broker: Broker, host: Host, sockdir: Path, attacker: pwd.struct_passwd
) -> None:
    # A second user hands its pipes over; this (root) process writes the requests into them.
    # The broker decides for the handing process, as for its own connection: getInfo is
    # root's and the kiki group's, so the call through the pipes is refused, as it is when the
    # second user asks on its own connection.
    path, _ = broker
    open_to_others(sockdir, path)

    async def hand_over() -> dict[str, Any]:
        for fd in (host.stdin_w, host.stdout_r):
            os.close(fd)  # the host's ends are the test's
        async with ToolClient(path) as tools:
            try:
                await tools.call(GET_INFO, {})
                direct = 0
            except Exception as exc:
                direct = getattr(exc, "jsonrpc_code", -1)
        wire = Wire(path)
        assert wire.ask() is None
        started = wire.hand(host.given)
        host.let_go()
        return {"direct": direct, "started": started, "result": wire.result()}

    outcome: dict[str, Any] = {}
    child = threading.Thread(target=lambda: outcome.update(run_as(attacker, hand_over)))
    child.start()
    try:
        host.write(call(1, GET_INFO))
        refused = host.read()
        host.end_input()
    finally:
        child.join(timeout=30)
    assert refused is not None
    assert refused["error"]["code"] == -32003, refused
    assert outcome["direct"] == -32003
    assert outcome["started"]["method"] == STARTED
    assert outcome["result"] == {"unanswered": 0}


def test_descriptors_sent_on_an_ordinary_connection_are_not_kept(
    broker: Broker, host: Host
) -> None:
    # The broker asks for descriptors on one read only; any a peer attaches to its requests
    # are dropped by the kernel as the broker reads them.
    path, proc = broker
    before = baseline(path, proc.pid)
    wire = Wire(path)
    try:
        for n in range(50):
            line = orjson.dumps({"jsonrpc": "2.0", "id": n, "method": "ping"}) + b"\n"
            socket.send_fds(wire.sock, [line], [*host.given, host.stdin_w, host.stdout_r])
            assert wire.read() == {"jsonrpc": "2.0", "id": n, "result": {}}
        assert settled(proc.pid, before + 1) == before + 1  # this connection
    finally:
        wire.close()


@pytest.mark.parametrize(
    ("what", "code", "message"),
    [
        ("socket", -32602, "stdin is not a pipe"),
        ("swapped", -32602, "stdin is not open for reading"),
        ("same", -32602, "stdin and stdout are the same pipe"),
        ("opath", -32602, "stdin is open for neither reading nor writing (O_PATH)"),
        ("three", -32600, "expected one newline carrying two descriptors, stdin then stdout"),
        ("one", -32600, "expected one newline carrying two descriptors, stdin then stdout"),
        ("none", -32600, "expected one newline carrying two descriptors, stdin then stdout"),
        ("text", -32600, "expected one newline carrying two descriptors, stdin then stdout"),
    ],
)
def test_what_is_not_two_pipes_is_refused_and_closed(
    broker: Broker, host: Host, tmp_path: Path, what: str, code: int, message: str
) -> None:
    path, proc = broker
    before = baseline(path, proc.pid)
    served = gauges(path).get("stdio_sessions", 0)
    os.mkfifo(tmp_path / "fifo")
    # A FIFO by fstat, but nothing can be read or written through it.
    located = os.open(tmp_path / "fifo", os.O_PATH)
    ours, theirs = socket.socketpair()
    with ours, theirs, contextlib.closing(os.fdopen(located, "rb", buffering=0)):
        fds, data = {
            "opath": ([located, host.stdout_w], b"\n"),
            "socket": ([theirs.fileno(), host.stdout_w], b"\n"),
            "swapped": ([host.stdout_w, host.stdin_r], b"\n"),
            "same": ([host.stdin_r, host.stdin_w], b"\n"),
            "three": ([*host.given, theirs.fileno()], b"\n"),
            "one": ([host.stdin_r], b"\n"),
            "none": ([], b"\n"),
            "text": (host.given, b"{"),
        }[what]
        wire = Wire(path)
        try:
            assert wire.ask() is None
            refusal: dict[str, Any] | None
            if fds:
                refusal = wire.hand(fds, data)
            else:
                wire.sock.sendall(data)
                refusal = wire.read()
            assert refusal is not None
            assert refusal["id"] == "h"
            assert (refusal["error"]["code"], refusal["error"]["message"]) == (code, message)
            # Nothing was kept, and the connection still serves: kiki mcp relays on it.
            wire.send({"jsonrpc": "2.0", "id": 2, "method": "ping"})
            assert wire.read() == {"jsonrpc": "2.0", "id": 2, "result": {}}
            assert settled(proc.pid, before + 1) == before + 1
            # A second try on the same connection is refused at once.
            again = wire.ask()
            assert again is not None
            assert again["error"]["code"] == -32600
        finally:
            wire.close()
    counters = gauges(path)
    assert counters["stdio_sessions_open"] == 0
    assert counters.get("stdio_sessions", 0) == served  # none started


@pytest.mark.parametrize("broker", [{"KIKI_TOOL_BROKER_MAX_STDIO_SESSIONS": "1"}], indirect=True)
def test_sessions_are_bounded(broker: Broker, host: Host) -> None:
    path, _ = broker
    first = Wire(path)
    second = Wire(path)
    try:
        assert first.ask() is None
        assert first.hand(host.given)["method"] == STARTED
        refusal = second.ask()
        assert refusal is not None
        assert refusal["error"]["code"] == -32005
        assert refusal["error"]["data"] == {"limit": 1}
        counters = gauges(path)
        assert (counters["stdio_sessions_open"], counters["stdio_refused"]) == (1, 1)
    finally:
        first.close()
        second.close()


def test_a_session_ends_with_its_handing_connection(broker: Broker, host: Host) -> None:
    # kiki mcp gone (killed, say): the broker lets go of the host's pipes, so the host sees
    # the end of stdout rather than a server that never answers again.
    path, proc = broker
    before = baseline(path, proc.pid)
    wire = Wire(path)
    assert wire.ask() is None
    assert wire.hand(host.given)["method"] == STARTED
    host.let_go()
    host.write({"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert host.read() is not None
    wire.close()
    assert host.read() is None
    assert gauges(path)["stdio_sessions_open"] == 0
    assert settled(proc.pid, before) == before


def test_a_drain_timeout_must_be_seconds(broker: Broker) -> None:
    path, _ = broker
    wire = Wire(path)
    try:
        for bad in (-1, "soon", True, [1]):
            params = {"drainTimeout": bad}
            wire.send({"jsonrpc": "2.0", "id": 1, "method": SERVE, "params": params})
            answer = wire.read()
            assert answer is not None
            assert answer["error"]["code"] == -32602
    finally:
        wire.close()
