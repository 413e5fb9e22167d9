"""Every ``kiki`` command ends quietly when the reader of its output goes away, as ``cat`` does.

Each command runs as a real process whose stdout is a real pipe. Either the test reads a few
lines and then closes its end while the command is still writing (``| head -3``), or the read
end is closed before the command starts (its first write fails, whatever the size of its output).
Either way the command must die of SIGPIPE, as ``cat`` does (a shell reports 141), and say
nothing: no traceback, no "Exception ignored" at the final flush, no error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kikitest import REPO, VENV_BIN
from kikitest.a11y_fixtures import R, demo_env, form_tree
from libkiki.a11y import wire
from libkiki.a11y.publisher import A11yPublisher

pytestmark = pytest.mark.integration

KIKI = str(VENV_BIN / "kiki")
DEADLINE = 30.0  # seconds for any one wait below


class Piped:
    """``kiki ARGS`` with its stdout on a pipe the test holds the read end of."""

    def __init__(
        self, args: list[str], tmp: Path, env: dict[str, str] | None, reader: bool
    ) -> None:
        read, write = os.pipe()
        self.read: int | None = read
        if not reader:  # closed before it starts: its very first write fails
            self.close_reader()
        self.errfile = tmp / f"stderr-{time.monotonic_ns()}"
        with self.errfile.open("wb") as err:
            self.proc = subprocess.Popen([KIKI, *args], stdout=write, stderr=err, env=env)
        os.close(write)
        self.pending = b""

    def close_reader(self) -> None:
        if self.read is not None:
            os.close(self.read)
            self.read = None

    def lines(self, count: int) -> list[bytes]:
        """The first ``count`` lines it writes (bounded wait)."""
        assert self.read is not None
        deadline = time.monotonic() + DEADLINE
        while self.pending.count(b"\n") < count:
            left = deadline - time.monotonic()
            assert left > 0, f"fewer than {count} lines came: {self.pending!r}"
            ready, _, _ = select.select([self.read], [], [], left)
            if ready:
                chunk = os.read(self.read, 1 << 16)
                assert chunk, f"it stopped writing after {self.pending!r}: {self.stderr()}"
                self.pending += chunk
        return self.pending.split(b"\n")[:count]

    def stderr(self) -> str:
        return self.errfile.read_text(errors="replace")

    def ended(self, nudge: Callable[[], Any] = lambda: None) -> int:
        """Its exit status, once it has ended; ``nudge`` makes it write more meanwhile."""
        deadline = time.monotonic() + DEADLINE
        while (code := self.proc.poll()) is None:
            assert time.monotonic() < deadline, "it kept running with nobody reading"
            nudge()
            _wait_briefly(self.proc)
        return code

    def kill(self) -> None:
        self.close_reader()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=DEADLINE)


@pytest.fixture
def piped(tmp_path: Path) -> Iterator[Callable[..., Piped]]:
    started: list[Piped] = []

    def start(*args: str, env: dict[str, str] | None = None, reader: bool = True) -> Piped:
        p = Piped(list(args), tmp_path, env, reader)
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()


def assert_quiet_sigpipe(p: Piped, nudge: Callable[[], Any] = lambda: None) -> None:
    p.close_reader()
    code = p.ended(nudge)
    err = p.stderr()
    assert "Traceback" not in err, err
    assert "Exception ignored" not in err, err
    assert err == "", err
    assert code == -signal.SIGPIPE, (code, err)


LEXICONS = str(REPO / "schemas" / "lexicons")


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--version"],
        ["schema", "--help"],
        ["schema", "show", "dev.kiki.media.defs"],
        ["schema", "show", "dev.kiki.media.defs", "--json"],
        ["schema", "lint", LEXICONS],
        ["schema", "lint", LEXICONS, "--json"],
        ["schema", "compat", LEXICONS, LEXICONS],
        ["status", "--runtime-dir", "/nonexistent", "--timeout", "0.5"],
    ],
    ids=" ".join,
)
def test_output_nobody_reads(piped: Callable[..., Piped], args: list[str]) -> None:
    assert_quiet_sigpipe(piped(*args, reader=False))


@pytest.mark.parametrize(
    "options", [[], ["--json"], ["--futex"], ["--futex", "--json"]], ids=" ".join
)
def test_sensors_watch_into_head(
    piped: Callable[..., Piped], start_publisher: Any, options: list[str]
) -> None:
    pub = start_publisher()
    p = piped("sensors", "--socket", str(pub.socket), "watch", "imu0", "--rate", "50", *options)
    assert all(line.startswith((b"imu0", b'{"sensor":"imu0"')) for line in p.lines(3))
    assert_quiet_sigpipe(p)  # the IMU goes on at 1 kHz: the next line meets the closed pipe


@pytest.mark.parametrize("command", ["list", "stats"])
def test_sensors_tables_nobody_reads(
    piped: Callable[..., Piped], start_publisher: Any, command: str
) -> None:
    pub = start_publisher()
    assert_quiet_sigpipe(piped("sensors", "--socket", str(pub.socket), command, reader=False))


def audit_line(seq: int) -> bytes:
    entry = {"seq": seq, "time": "2026-12-07T09:00:00Z", "tool": "com.example.x", "outcome": "ok"}
    return json.dumps(entry).encode() + b"\n"


def test_tools_log_file_into_head(piped: Callable[..., Piped], tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    audit.write_bytes(b"".join(audit_line(i) for i in range(20_000)))  # more than a pipe holds
    p = piped("tools", "log", "--file", str(audit), "--limit", "20000")
    assert p.lines(3)[0].split()[0] == b"0"
    assert_quiet_sigpipe(p)


def test_tools_log_follow_file_into_head(piped: Callable[..., Piped], tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    audit.write_bytes(b"".join(audit_line(i) for i in range(3)))
    p = piped("tools", "log", "--file", str(audit), "--follow", "--json")
    assert [json.loads(line)["seq"] for line in p.lines(3)] == [0, 1, 2]
    more = iter(range(3, 1 << 30))

    def append() -> None:
        with audit.open("ab") as f:
            f.write(audit_line(next(more)))

    assert_quiet_sigpipe(p, nudge=append)


@pytest.mark.parametrize(
    "args",
    [
        ["log"],
        ["log", "--json"],
        ["log", "--follow"],
        ["list"],
        ["call", "dev.kiki.service.getInfo"],
    ],
    ids=" ".join,
)
def test_tools_through_the_broker_nobody_reads(
    piped: Callable[..., Piped], broker: tuple[Path, Any], args: list[str]
) -> None:
    path, _ = broker
    # At least one line for log to show: a call of our own.
    call = [KIKI, "tools", "--socket", str(path), "call", "dev.kiki.service.getInfo"]
    subprocess.run(call, capture_output=True, check=True, timeout=DEADLINE)
    assert_quiet_sigpipe(piped("tools", "--socket", str(path), *args, reader=False))


@pytest.mark.parametrize("options", [[], ["--json"]], ids=" ".join)
async def test_a11y_watch_into_head(
    piped: Callable[..., Piped], a11y_server: Any, sockdir: Path, options: list[str]
) -> None:
    path, _ = a11y_server()
    async with A11yPublisher(path) as pub:
        await pub.publish(form_tree(), root_id=1)
        p = piped("a11y", "--socket", str(path), "watch", *options, env=demo_env(sockdir))
        (first,) = await asyncio.to_thread(p.lines, 1)
        assert b"snapshot" in first
        p.close_reader()
        names = iter(range(1 << 30))
        async with asyncio.timeout(DEADLINE):
            while p.proc.poll() is None:  # each update is a line it must try to write
                await pub.publish([wire.Node(5, R["button"], f"Save {next(names)}")])
                await asyncio.to_thread(_wait_briefly, p.proc)
    assert_quiet_sigpipe(p)


def _wait_briefly(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=0.1)


@pytest.mark.parametrize(
    "args", [["dump"], ["dump", "--json"], ["find", "role=button"]], ids=" ".join
)
async def test_a11y_output_nobody_reads(
    piped: Callable[..., Piped], a11y_server: Any, sockdir: Path, args: list[str]
) -> None:
    path, _ = a11y_server()
    async with A11yPublisher(path) as pub:
        await pub.publish(form_tree(), root_id=1)
        p = piped("a11y", "--socket", str(path), *args, env=demo_env(sockdir), reader=False)
        await asyncio.to_thread(p.ended)
    assert_quiet_sigpipe(p)


def test_mcp_whose_host_closed_stdout_exits_0(broker: tuple[Path, Any]) -> None:
    # The one exception, on purpose: an MCP host that closes the bridge's stdout has ended
    # its session, which is no failure.
    path, _ = broker
    read, write = os.pipe()
    os.close(read)
    request = b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n'
    try:
        result = subprocess.run(
            [KIKI, "mcp", "--socket", str(path)],
            input=request,
            stdout=write,
            stderr=subprocess.PIPE,
            timeout=DEADLINE,
            check=False,
        )
    finally:
        os.close(write)
    assert result.stderr == b""
    assert result.returncode == 0


@pytest.mark.parametrize(
    "args",
    [["--help"], ["--version"], ["schema", "lint", str(REPO / "schemas" / "lexicons")]],
    ids=["help", "version", "schema-lint"],
)
@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
def test_output_that_cannot_be_written_is_one_line_and_status_1(
    args: list[str], unbuffered: bool
) -> None:
    # A full disk is not a reader gone away: it is said, once, and the command fails (it was
    # two chained tracebacks and status 120). Unbuffered, the write fails at the print itself.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    with open("/dev/full", "wb") as full:
        result = subprocess.run(
            [str(VENV_BIN / "kiki"), *args],
            stdout=full,
            stderr=subprocess.PIPE,
            env=env,
            timeout=60,
        )
    assert result.returncode == 1
    assert result.stderr.decode() == "kiki: cannot write the output: No space left on device\n"


@pytest.mark.parametrize("unbuffered", [True, False])
def test_unbuffered_output_stays_unbuffered_under_the_pipe_guard(
    unbuffered: bool, tmp_path: Path
) -> None:
    # A command's partial line (no newline, the process still running) reaches the pipe at once
    # when Python runs unbuffered, as it would without the guard; buffered, it waits.
    script = (
        "import sys\n"
        "from kiki_cli.common import quiet_pipes\n"
        "with quiet_pipes():\n"
        "    sys.stdout.write('partial')\n"
        "    sys.stdin.read()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        [str(VENV_BIN / "python"), "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        # Unbuffered: the bytes come; buffered: nothing comes while it waits on its stdin.
        ready, _, _ = select.select([proc.stdout], [], [], DEADLINE if unbuffered else 1.0)
        assert bool(ready) is unbuffered
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=DEADLINE) == 0
    assert proc.stdout.read() == b"partial"
