"""`kiki mcp`, the stdio bridge, against the real broker: what a host that writes its
requests and then closes stdin gets back. Pipes are served two ways, each tested: handed over
to the broker (the default) and relayed (``--relay``); anything else is relayed."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import socket
import subprocess
import threading
import time
import tty
from asyncio.subprocess import PIPE
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson
import pytest

from kikitest import VENV_BIN, kiki
from kikitest.broker_lexicons import ECHO, LEXICONS, SLOW
from libkiki.tools import ToolCall, ToolProvider

pytestmark = pytest.mark.integration

Broker = tuple[Path, subprocess.Popen[bytes]]


def make_provider(path: Path) -> ToolProvider:
    """ECHO answers after ``delay`` ms; SLOW never answers."""
    provider = ToolProvider(path, lexicons=LEXICONS)

    @provider.tool(ECHO)
    async def echo(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        await asyncio.sleep(args.get("delay", 0) / 1000)
        return {"text": args["text"]}

    @provider.tool(SLOW)
    async def slow(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}

    return provider


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "0"},
    },
}


def sessions_served(path: Path) -> int:
    """The broker's count of sessions served on handed-over pipes (getInfo's counters)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(orjson.dumps(call(1, "dev.kiki.service.getInfo")) + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(1 << 16)
            assert chunk, "the broker closed the connection"
            answer += chunk
    count: int = orjson.loads(answer)["result"]["structuredContent"]["counters"].get(
        "stdio_sessions", 0
    )
    return count


@pytest.fixture(params=["handover", "relay"])
def via(request: pytest.FixtureRequest, broker: Broker) -> Iterator[tuple[str, ...]]:
    """kiki mcp's arguments for serving pipes each way. A handover that falls back to relaying
    does so silently: the broker's count of sessions tells them apart, checked after the test
    (it rose for "handover", it did not for "relay")."""
    path, _ = broker
    before = sessions_served(path)
    yield ("--relay",) if request.param == "relay" else ()
    after = sessions_served(path)
    if request.param == "handover":
        assert after > before, "kiki mcp relayed: nothing was handed over"
    else:
        assert after == before, "kiki mcp handed its pipes over"


def call(rid: Any, name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    params = {"name": name, "arguments": arguments or {}}
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}


async def start_bridge(
    path: Path, stdin: Any = PIPE, stdout: Any = PIPE, extra: tuple[str, ...] = ()
) -> asyncio.subprocess.Process:
    """A `kiki mcp` process on the broker at ``path``, its stderr a pipe."""
    return await asyncio.create_subprocess_exec(
        str(VENV_BIN / "kiki"),
        *("mcp", "--socket", str(path), *extra),
        stdin=stdin,
        stdout=stdout,
        stderr=PIPE,
    )


async def bridge(
    path: Path, *messages: Any, extra: tuple[str, ...] = (), tail: bytes = b""
) -> tuple[list[Any], str]:
    """Write ``messages`` (then ``tail``) to a fresh `kiki mcp` and close its stdin; what it
    printed, line by line, and its stderr."""
    proc = await start_bridge(path, extra=extra)
    data = b"".join(orjson.dumps(m) + b"\n" for m in messages) + tail
    out, err = await proc.communicate(data)
    assert proc.returncode == 0, err.decode()
    return [orjson.loads(line) for line in out.splitlines()], err.decode()


def by_id(lines: list[Any]) -> dict[Any, dict[str, Any]]:
    flat = [m for line in lines for m in (line if isinstance(line, list) else [line])]
    return {m["id"]: m for m in flat if "id" in m and "method" not in m}


async def test_answers_to_forwarded_requests_arrive_after_stdin_closes(
    broker: Broker, via: tuple[str, ...]
) -> None:
    path, _ = broker
    async with asyncio.timeout(30), make_provider(path).connect():
        lines, _ = await bridge(
            path,
            INITIALIZE,
            call(2, ECHO, {"text": "x", "delay": 300}),
            call(3, "dev.kiki.service.getInfo"),
            extra=via,
        )
    answers = by_id(lines)
    assert answers[1]["result"]["protocolVersion"] == "2025-11-25"
    assert answers[2]["result"]["structuredContent"]["text"] == "x"
    assert answers[3]["result"]["structuredContent"]["name"] == "tool-broker"


async def test_answers_are_waited_for_after_an_earlier_exchange(
    broker: Broker, via: tuple[str, ...]
) -> None:
    # The host waits for the handshake's answer (the bridge is idle again), then sends a slow
    # call and closes stdin: the call is still owed, and waited for.
    path, _ = broker
    async with asyncio.timeout(30), make_provider(path).connect():
        proc = await start_bridge(path, extra=via)
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(orjson.dumps(INITIALIZE) + b"\n")
        assert orjson.loads(await proc.stdout.readline())["id"] == 1
        proc.stdin.write(orjson.dumps(call(2, ECHO, {"text": "late", "delay": 300})) + b"\n")
        proc.stdin.close()
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    [answer] = [orjson.loads(line) for line in out.splitlines()]
    assert answer["result"]["structuredContent"]["text"] == "late"
    assert err == b""


LONG_CALLS = pytest.mark.parametrize(
    "broker", [{"KIKI_TOOL_BROKER_CALL_TIMEOUT": "600"}], indirect=True
)


@LONG_CALLS
async def test_drain_waits_for_batches_but_not_for_streams_or_cancelled_calls(
    broker: Broker, via: tuple[str, ...]
) -> None:
    # A listen stream is answered only at close and a cancelled call never: were the bridge to
    # wait for either, it would sit out its 600 s drain and the test's timeout would fire.
    path, _ = broker
    listen = {"notifications": {"toolsListChanged": True}}
    async with asyncio.timeout(30), make_provider(path).connect():
        lines, err = await bridge(
            path,
            [
                call(10, ECHO, {"text": "a", "delay": 200}),
                {"jsonrpc": "2.0", "method": "notifications/initialized"},
                call("b", ECHO, {"text": "b"}),
            ],
            {"jsonrpc": "2.0", "id": "s", "method": "subscriptions/listen", "params": listen},
            call(12, SLOW),
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 12}},
            extra=("--drain-timeout", "600", *via),
            # The last message has no newline: the bridge ends it for the broker.
            tail=orjson.dumps(call(13, "dev.kiki.service.getInfo")),
        )
    assert any(isinstance(line, list) for line in lines)  # the batch was answered as one
    answers = by_id(lines)
    assert answers[10]["result"]["structuredContent"]["text"] == "a"
    assert answers["b"]["result"]["structuredContent"]["text"] == "b"
    assert answers[13]["result"]["structuredContent"]["name"] == "tool-broker"
    assert 12 not in answers
    assert "unanswered" not in err


@LONG_CALLS
async def test_drain_gives_up_after_its_timeout(broker: Broker, via: tuple[str, ...]) -> None:
    path, _ = broker
    async with asyncio.timeout(30), make_provider(path).connect():
        lines, err = await bridge(path, call(1, SLOW), extra=("--drain-timeout", "0.1", *via))
    assert lines == []
    assert "1 request(s) still unanswered after 0.1 s" in err


# Enough answers to fill the host's stdout pipe (64 KiB) several times over.
MANY = [call(n, "dev.kiki.service.getInfo") for n in range(300)]


async def late_reader(path: Path, extra: tuple[str, ...]) -> tuple[bytes, str]:
    """Write MANY to a fresh `kiki mcp` and close its stdin; read its stdout (a plain pipe:
    nothing reads it meanwhile) only 3 s later, longer than a connection flushes at close on
    its own, to its end."""
    stdout_r, stdout_w = os.pipe()
    try:
        proc = await start_bridge(path, stdout=stdout_w, extra=extra)
    finally:
        os.close(stdout_w)
    try:
        assert proc.stdin is not None
        assert proc.stderr is not None
        proc.stdin.write(b"".join(orjson.dumps(m) + b"\n" for m in MANY))
        await proc.stdin.drain()
        proc.stdin.close()
        await asyncio.sleep(3)
        with os.fdopen(stdout_r, "rb") as stdout:
            stdout_r = -1
            out = await asyncio.to_thread(stdout.read)
        err = await proc.stderr.read()
        assert await proc.wait() == 0, err
    finally:
        if stdout_r >= 0:
            os.close(stdout_r)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out, err.decode()


async def test_a_host_that_reads_late_gets_every_answer(
    broker: Broker, via: tuple[str, ...]
) -> None:
    # The answers wait in the pipe and in the broker's buffer for as long as the drain allows,
    # not only as long as closing a connection flushes.
    path, _ = broker
    async with asyncio.timeout(60):
        out, err = await late_reader(path, via)
    answers = by_id([orjson.loads(line) for line in out.splitlines()])
    assert sorted(answers) == list(range(len(MANY)))
    assert err == ""


async def test_answers_cut_off_by_the_drain_timeout_are_counted(broker: Broker) -> None:
    # Handed over: what the host's pipe never took by the drain's end is dropped, and counted
    # among the unanswered (a line cut short too), never dropped quietly.
    path, _ = broker
    async with asyncio.timeout(60):
        out, err = await late_reader(path, ("--drain-timeout", "1"))
    whole = [line for line in out.split(b"\n")[:-1]]
    assert len(whole) < len(MANY)
    said = re.fullmatch(
        r"kiki mcp: stdin closed; (\d+) request\(s\) still unanswered after 1 s, giving up\n", err
    )
    assert said is not None, err
    assert int(said[1]) == len(MANY) - len(whole)


def test_drain_timeout_must_be_a_duration(sockdir: Path) -> None:
    proc = kiki("mcp", "--socket", str(sockdir / "x"), "--drain-timeout", "-1", stdin="")
    assert proc.returncode == 2
    assert "--drain-timeout: must be 0 or more seconds" in proc.stderr


# Pings with long ids, so that both the requests and their answers (which echo the ids) take
# several of the bridge's 64 KiB reads; few enough for the broker's 64 requests in flight.
PINGS = [f"ping {n} " + "x" * 3000 for n in range(40)]
REQUESTS = [
    INITIALIZE,
    call(2, ECHO, {"text": "x", "delay": 300}),  # answered after stdin ends: drained
    *({"jsonrpc": "2.0", "id": n, "method": "ping"} for n in PINGS),
    call(3, "dev.kiki.service.getInfo"),
]
REQUEST_BYTES = b"".join(orjson.dumps(m) + b"\n" for m in REQUESTS)


def assert_answered(out: bytes) -> None:
    """``out`` is every answer to REQUESTS, once each, one per whole line, and nothing else."""
    assert out.endswith(b"\n")
    lines = [orjson.loads(line) for line in out.splitlines()]
    answers = by_id(lines)
    assert len(lines) == len(answers) == len(REQUESTS)
    assert answers[1]["result"]["protocolVersion"] == "2025-11-25"
    assert answers[2]["result"]["structuredContent"]["text"] == "x"
    assert answers[3]["result"]["structuredContent"]["name"] == "tool-broker"
    for n in PINGS:
        assert answers[n] == {"jsonrpc": "2.0", "id": n, "result": {}}


async def run_bridge(
    path: Path, stdin: int | IO[bytes], stdout: int | IO[bytes], data: bytes | None = None
) -> tuple[bytes, bytes]:
    """Run `kiki mcp` on the given stdin and stdout (writing ``data`` when stdin is a pipe) to
    its end; its output (when stdout is a pipe) and stderr. Killed if the caller gives up."""
    proc = await start_bridge(path, stdin, stdout)
    try:
        out, err = await proc.communicate(data)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    return out or b"", err


async def test_stdout_may_be_a_regular_file(broker: Broker, tmp_path: Path) -> None:
    # epoll refuses regular files: the bridge must not need it for stdout.
    path, _ = broker
    target = tmp_path / "out.jsonl"
    async with asyncio.timeout(30), make_provider(path).connect():
        with target.open("wb") as stdout:
            _, err = await run_bridge(path, asyncio.subprocess.PIPE, stdout, REQUEST_BYTES)
    assert err == b""
    assert_answered(target.read_bytes())


async def test_stdin_may_be_a_regular_file(broker: Broker, tmp_path: Path) -> None:
    # Its end is the end of input, as a closed pipe's is: the answers owed are still delivered.
    path, _ = broker
    source = tmp_path / "requests.jsonl"
    source.write_bytes(REQUEST_BYTES)
    async with asyncio.timeout(30), make_provider(path).connect():
        with source.open("rb") as stdin:
            out, err = await run_bridge(path, stdin, asyncio.subprocess.PIPE)
    assert err == b""
    assert_answered(out)


async def test_both_ends_may_be_regular_files(broker: Broker, tmp_path: Path) -> None:
    path, _ = broker
    source, target = tmp_path / "requests.jsonl", tmp_path / "out.jsonl"
    source.write_bytes(REQUEST_BYTES)
    async with asyncio.timeout(30), make_provider(path).connect():
        with source.open("rb") as stdin, target.open("wb") as stdout:
            _, err = await run_bridge(path, stdin, stdout)
    assert err == b""
    assert_answered(target.read_bytes())


async def test_stdin_from_dev_null_is_at_once_the_end_of_input(broker: Broker) -> None:
    # epoll refuses /dev/null too; were the bridge to wait for it to be readable, it would
    # wait for ever.
    path, _ = broker
    async with asyncio.timeout(10):
        out, err = await run_bridge(path, asyncio.subprocess.DEVNULL, asyncio.subprocess.PIPE)
    assert out == b""
    assert err == b""


# Each maker of a stdin or stdout for the bridge puts the bridge's end on ``given`` (closed in the
# test as soon as the bridge has started, so that the end of the bridge is the end of its
# output) and the test's own end on ``kept``.


def stdin_of(
    kind: str, tmp_path: Path, given: contextlib.ExitStack, kept: contextlib.ExitStack
) -> tuple[int | IO[bytes], Callable[[], None]]:
    """A stdin of ``kind`` that holds REQUEST_BYTES (none for /dev/null), and what feeds it."""
    if kind == "devnull":
        return subprocess.DEVNULL, lambda: None
    if kind == "file":
        (tmp_path / "requests.jsonl").write_bytes(REQUEST_BYTES)
        return given.enter_context((tmp_path / "requests.jsonl").open("rb")), lambda: None
    assert kind == "socket"
    ours, theirs = socket.socketpair()
    kept.enter_context(ours)
    given.enter_context(theirs)

    def feed() -> None:
        ours.sendall(REQUEST_BYTES)
        ours.shutdown(socket.SHUT_WR)

    return theirs.fileno(), feed


def collect(read: Callable[[], bytes]) -> Callable[[], bytes]:
    """Call ``read`` in a thread until it gives b"" (so that the bridge is never kept waiting
    for its reader); what gives all it read, once it is done."""
    chunks: list[bytes] = []
    thread = threading.Thread(target=lambda: chunks.extend(iter(read, b"")), daemon=True)
    thread.start()

    def result() -> bytes:
        thread.join()
        return b"".join(chunks)

    return result


def stdout_of(
    kind: str, tmp_path: Path, given: contextlib.ExitStack, kept: contextlib.ExitStack
) -> tuple[int | IO[bytes], Callable[[], bytes]]:
    """A stdout of ``kind``, and what gives all the bridge wrote to it once the bridge has
    ended (nothing for /dev/null)."""
    if kind == "devnull":
        return subprocess.DEVNULL, lambda: b""
    if kind == "file":
        target = tmp_path / "out.jsonl"
        return given.enter_context(target.open("wb")), target.read_bytes
    if kind == "socket":
        ours, theirs = socket.socketpair()
        kept.enter_context(ours)
        given.enter_context(theirs)
        return theirs.fileno(), collect(lambda: ours.recv(1 << 16))
    assert kind == "pty"  # a character device that epoll accepts
    master, slave = os.openpty()
    kept.callback(os.close, master)
    given.callback(os.close, slave)
    tty.setraw(slave)  # line ends as they are, no \r added

    def read() -> bytes:
        try:
            return os.read(master, 1 << 16)
        except OSError:  # EIO: no one holds the slave any more
            return b""

    return slave, collect(read)


@pytest.mark.parametrize(
    ("stdin", "stdout"),
    [
        ("file", "devnull"),
        ("file", "socket"),
        ("file", "pty"),
        ("devnull", "file"),
        ("devnull", "devnull"),
        ("devnull", "socket"),
        ("devnull", "pty"),
        ("socket", "file"),
    ],
)
async def test_stdin_and_stdout_may_be_any_file(
    broker: Broker, tmp_path: Path, stdin: str, stdout: str
) -> None:
    path, _ = broker
    async with asyncio.timeout(30), make_provider(path).connect():
        with contextlib.ExitStack() as kept:
            with contextlib.ExitStack() as given:
                source, feed = stdin_of(stdin, tmp_path, given, kept)
                target, read = stdout_of(stdout, tmp_path, given, kept)
                proc = await start_bridge(path, source, target)
            try:
                fed = asyncio.ensure_future(asyncio.to_thread(feed))
                _, err = await proc.communicate()
                await fed
                output = await asyncio.to_thread(read)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert err == b""
    if stdout == "devnull":
        return
    if stdin == "devnull":
        assert output == b""
    else:
        assert_answered(output)


async def test_pipes_the_host_set_non_blocking_are_waited_for(
    broker: Broker, via: tuple[str, ...]
) -> None:
    # O_NONBLOCK belongs to the open pipe, so a host may hand the bridge its ends set so. The
    # requests trickle in and the answers are read slowly through a one-page pipe (writes find
    # stdout full): "try again" is neither the end of the requests nor a failure to write.
    path, _ = broker
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    fcntl.fcntl(stdout_w, fcntl.F_SETPIPE_SZ, 4096)
    os.set_blocking(stdin_r, False)
    os.set_blocking(stdout_w, False)

    def feed() -> None:
        with open(stdin_w, "wb", buffering=0) as pipe:
            for start in range(0, len(REQUEST_BYTES), 4096):
                pipe.write(REQUEST_BYTES[start : start + 4096])
                time.sleep(0.005)

    def read_slowly() -> bytes:
        time.sleep(0.002)
        return os.read(stdout_r, 1024)

    try:
        async with asyncio.timeout(30), make_provider(path).connect():
            try:
                proc = await start_bridge(path, stdin_r, stdout_w, extra=via)
            finally:
                os.close(stdin_r)
                os.close(stdout_w)
            output = collect(read_slowly)
            fed = asyncio.ensure_future(asyncio.to_thread(feed))
            try:
                _, err = await proc.communicate()
                await fed
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            out = await asyncio.to_thread(output)
    finally:
        os.close(stdout_r)
    assert proc.returncode == 0, err.decode()
    assert err == b""
    assert_answered(out)


async def test_an_answer_that_cannot_be_written_is_an_error_not_silence(broker: Broker) -> None:
    # A full disk under stdout (here /dev/full): the host will never see those answers, so the
    # bridge says so and exits 1 (a host that closed its end is another matter: exit 0).
    path, _ = broker
    full = os.open("/dev/full", os.O_WRONLY | os.O_CLOEXEC)
    try:
        async with asyncio.timeout(30):
            proc = await start_bridge(path, stdout=full)
            _, err = await proc.communicate(orjson.dumps(INITIALIZE) + b"\n")
    finally:
        os.close(full)
    assert proc.returncode == 1
    assert err.decode() == "kiki mcp: cannot write to stdout: No space left on device\n"


async def test_one_socket_may_be_both_stdin_and_stdout(broker: Broker) -> None:
    # As socat's EXEC: or systemd's Accept=yes give it: the host's next request on the socket
    # once looked like the end of stdout to the bridge, which dropped the answers after the
    # first and exited 0.
    path, _ = broker
    ours, theirs = socket.socketpair()
    with ours:
        with theirs:
            proc = await start_bridge(path, theirs.fileno(), theirs.fileno())
        ours.setblocking(False)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(30):
            answers: list[Any] = []
            await loop.sock_sendall(ours, orjson.dumps(INITIALIZE) + b"\n")
            received = b""
            for rid, method in ((2, "tools/list"), (3, "ping")):
                while received.count(b"\n") < rid - 1:
                    received += await loop.sock_recv(ours, 1 << 16)
                request = {"jsonrpc": "2.0", "id": rid, "method": method}
                await loop.sock_sendall(ours, orjson.dumps(request) + b"\n")
            ours.shutdown(socket.SHUT_WR)
            while chunk := await loop.sock_recv(ours, 1 << 16):
                received += chunk
            answers = [orjson.loads(line) for line in received.splitlines()]
            _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert [a["id"] for a in answers] == [1, 2, 3]
    assert "tools" in answers[1]["result"]
    assert answers[2]["result"] == {}
