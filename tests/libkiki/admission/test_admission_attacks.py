"""Connection admission under attack from a second local user, on both kinds of socket.

The attacker runs as ``kiki-test-attacker`` (see ``second_user``) against a real server
process: the a11y-server (frames, :func:`libkiki.servers.serve_stream`) and a JSON-RPC server
(:class:`libkiki.rpc.server.RpcServer`, as every line service runs it). The victim is this
process (root).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest

from kikitest import REPO
from kikitest.admission_peers import ask, connect, request, warm_up
from kikitest.admission_peers import main as peers_main
from kikitest.second_user import ATTACKER, open_to_others

pytestmark = pytest.mark.integration

PEERS = REPO / "tests" / "kikitest" / "admission_peers.py"
BOUND = 120.0  # seconds any one attack may take


@dataclass
class Server:
    kind: str
    path: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def refusal_lines(self) -> list[str]:
        text = self.log.read_text(errors="replace")
        return [line for line in text.splitlines() if "refusing a connection" in line]


@pytest.fixture
def start_server(
    sockdir: Path,
    a11y_server: Callable[..., tuple[Path, subprocess.Popen[bytes]]],
    spawn_service: Any,
) -> Iterator[Callable[..., Server]]:
    """Start a server of ``kind``: ``a11y`` (the a11y-server), ``tools`` (the tool-broker) or
    ``rpc`` (a bare JSON-RPC server, :func:`libkiki.rpc.serve_unix` alone)."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(kind: str, max_connections: int, per_user: int, **settings: Any) -> Server:
        if kind == "a11y":
            path, proc = a11y_server(
                max_connections=max_connections, max_connections_per_user=per_user, **settings
            )
            log = sockdir / "stderr-a11y-server-0"
        elif kind == "tools":
            (sockdir / "etc").mkdir(exist_ok=True)
            env = {
                "KIKI_LOG_LEVEL": "WARNING",
                "KIKI_TOOL_BROKER_MAX_CONNECTIONS": str(max_connections),
                "KIKI_TOOL_BROKER_MAX_CONNECTIONS_PER_USER": str(per_user),
            }
            proc, notes = spawn_service("tool-broker", extra_env=env)
            notes.wait_for("READY")
            path, log = sockdir / "tools.sock", sockdir / "stderr-tool-broker-0"
        else:
            path = sockdir / "rpc.sock"
            log = sockdir / "stderr-rpc"
            limits = (str(max_connections), str(per_user))
            with log.open("wb") as sink:
                proc = subprocess.Popen(
                    [sys.executable, str(PEERS), "serve-rpc", str(path), *limits],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=sink,
                )
            procs.append(proc)
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"ready\n"
        open_to_others(sockdir, path)
        return Server("a11y" if kind == "a11y" else "rpc", path, proc, log)

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(timeout=10)


class Attack:
    """One attacker, a forked child of this process that became the second user (the venv's
    interpreter lives under /root, which that user cannot reach, so it cannot exec one)."""

    def __init__(self, user: pwd.struct_passwd, *args: str) -> None:
        to_child, self._stdin = os.pipe()
        from_child, to_parent = os.pipe()
        warm_up()  # what the child imports, it must import while it still can
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover -- the child
            code = 1
            try:
                os.dup2(to_child, 0)
                os.dup2(to_parent, 1)
                # Nothing else of ours: a pipe end kept here would keep another child waiting.
                os.closerange(3, os.sysconf("SC_OPEN_MAX"))
                os.setgroups([])
                os.setgid(user.pw_gid)
                os.setuid(user.pw_uid)
                sys.stdin = os.fdopen(0, "r")
                sys.stdout = os.fdopen(1, "w")
                peers_main(list(args))
                code = 0
            except BaseException:
                print(json.dumps({"failed": traceback.format_exc()}), file=sys.stdout, flush=True)
            finally:
                os._exit(code)
        os.close(to_child)
        os.close(to_parent)
        self._stdout = os.fdopen(from_child, "r")
        self._reaped = False

    def result(self) -> dict[str, int]:
        """The counts it reports once its connections are made and classified."""
        line = self._stdout.readline()  # bounded by the attacker's own socket timeouts
        assert line, "the attacker died without a word"
        counts: dict[str, Any] = json.loads(line)
        assert "failed" not in counts, counts["failed"]
        return counts

    def stop(self) -> None:
        if self._reaped:
            return
        os.close(self._stdin)
        os.waitpid(self.pid, 0)  # the child exits once its stdin ends, or was killed
        self._reaped = True
        self._stdout.close()

    def kill(self) -> None:
        if not self._reaped:
            os.kill(self.pid, signal.SIGKILL)


@pytest.fixture
def attack(attacker: pwd.struct_passwd) -> Iterator[Callable[..., Attack]]:
    """Runs an attack as the second user (the ``attacker`` fixture makes it), or as ``user=``."""
    attacks: list[Attack] = []

    def run(*args: str, user: str = ATTACKER) -> Attack:
        attacks.append(Attack(pwd.getpwnam(user), *args))
        return attacks[-1]

    yield run
    for a in attacks:
        a.kill()
        a.stop()


def victim_is_served(server: Server) -> None:
    assert admitted(server)


KINDS = ["a11y", "tools", "rpc"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_user_holding_its_share_and_flooding_does_not_lock_out_another(
    kind: str, start_server: Callable[..., Server], attack: Callable[..., Attack]
) -> None:
    # The attacker takes every slot it can and then reconnects as fast as it can: it keeps
    # only its own share, every refused connection reads the refusal, and the log says so in
    # a bounded number of lines (before, one warning per refusal: 119 410 lines in 45 s).
    server = start_server(kind, max_connections=16, per_user=4)
    holder = attack("hold", server.kind, str(server.path), "24")
    assert holder.result() == {"admitted": 4, "refused": 20}
    flood = attack("flood", server.kind, str(server.path), "1500")
    victim_is_served(server)
    assert flood.result() == {"refused": 1500}
    victim_is_served(server)
    lines = server.refusal_lines()
    assert 0 < len(lines) <= 12, lines[:20]
    assert all(f"uid {pwd.getpwnam(ATTACKER).pw_uid}" in line for line in lines)
    holder.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_a_burst_of_connects_never_admits_more_than_the_limit(
    kind: str, start_server: Callable[..., Server], attack: Callable[..., Attack]
) -> None:
    # Counted only once a connection's task ran, a burst of 3000 connects got 1142 connections
    # admitted against a limit of 256. The attacker holds every connection it makes, so all
    # those admitted are open at once at the end.
    server = start_server(kind, max_connections=256, per_user=256)
    burst = attack("hold", server.kind, str(server.path), "3000")
    counts = burst.result()
    assert counts == {"admitted": 256, "refused": 3000 - 256}
    burst.stop()
    # The slots come back as the server sees the attacker's connections close, not at once.
    wait_for(lambda: admitted(server), "a connection admitted once the burst's were closed")


def admitted(server: Server) -> bool:
    with connect(str(server.path)) as sock:
        return ask(server.kind, sock) == "admitted"


@pytest.mark.parametrize("kind", KINDS)
def test_a_refused_peer_that_wrote_first_still_reads_the_refusal(
    kind: str, start_server: Callable[..., Server]
) -> None:
    # Closed with the peer's input unread, the socket resets the peer, and a client that sees
    # the reset first (asyncio's StreamReader raises it before buffered data) loses the refusal.
    server = start_server(kind, max_connections=1, per_user=1)
    with connect(str(server.path)) as holder:
        assert ask(server.kind, holder) == "admitted"
        for _ in range(3):
            with connect(str(server.path)) as sock:
                sock.sendall(request(server.kind) * 2000)
                got = b""
                while chunk := sock.recv(65536):  # a reset raises here
                    got += chunk
            assert first_error_code(server.kind, got) == -32005


def first_error_code(kind: str, data: bytes) -> int:
    if kind == "rpc":
        code: int = orjson.loads(data.split(b"\n", 1)[0])["error"]["code"]
        return code
    from libkiki.a11y import wire
    from libkiki.framing import FrameDecoder

    frame = next(iter(FrameDecoder(1 << 20).feed(data)))
    assert isinstance(frame, bytes)
    message = wire.decode(frame)
    assert isinstance(message, wire.Error)
    return message.code


def vm_rss(pid: int) -> int:
    """Resident memory of ``pid`` in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1)) * 1024


def counters(server: Server) -> dict[str, int]:
    from libkiki.a11y import wire
    from libkiki.framing import FrameDecoder, encode_frame

    with connect(str(server.path)) as sock:
        sock.sendall(encode_frame(wire.encode(wire.GetInfo(1))))
        decoder = FrameDecoder(1 << 20)
        while True:
            data = sock.recv(65536)
            assert data, "the server closed the connection"
            for frame in decoder.feed(data):
                assert isinstance(frame, bytes)
                info = wire.decode(frame)
                assert isinstance(info, wire.Info)
                return dict(info.counters)


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {BOUND}s: {what}")
        time.sleep(0.05)


def seen_closed(server: Server, count: int) -> bool:
    """Has the server counted ``count`` connections that closed inside a frame?"""
    return counters(server).get("protocol_errors", 0) >= count


def test_abandoned_partial_frames_are_freed_when_their_connections_close(
    start_server: Callable[..., Server], attack: Callable[..., Attack]
) -> None:
    # 30 connections sending all but the last byte of a 16 MiB frame, then closing, raised the
    # server's RSS by ~460 MB a round, kept until a full garbage collection ran (the frames sat
    # in reference cycles). The pool is made large enough here to let every frame in.
    frame = 16 << 20
    per_round, rounds = 12, 4
    server = start_server(
        "a11y", max_connections=256, per_user=64, max_buffered_bytes=2 * per_round * frame
    )
    victim_is_served(server)
    baseline = vm_rss(server.proc.pid)
    closed = counters(server).get("protocol_errors", 0)
    after = []
    for _ in range(rounds):
        attack("partial", str(server.path), str(per_round), str(frame)).result()
        closed += per_round  # each one counted as a connection closed inside a frame
        wait_for(partial(seen_closed, server, closed), "the closes seen")
        after.append(vm_rss(server.proc.pid))
    held = max(after) - baseline
    # One round's frames are 192 MiB: what stays must be far less than even one of them.
    assert held < per_round * frame // 2, (baseline, after)
    victim_is_served(server)


def test_the_bytes_buffered_across_connections_are_bounded(
    start_server: Callable[..., Server], attack: Callable[..., Attack]
) -> None:
    # Each connection under max_frame, all of them far over max_buffered_bytes: the peers
    # past the pool are refused (-32005) and closed, and the server holds about the pool.
    # Root, held to the total only, so that the per-user share does not stop it first.
    frame, pool, peers = 15 << 20, 48 << 20, 8
    server = start_server("a11y", max_connections=256, per_user=64, max_buffered_bytes=pool)
    baseline = vm_rss(server.proc.pid)
    filler = attack("fill", str(server.path), str(peers), str(frame), user="root")
    assert filler.result() == {"held": pool // frame, "refused": peers - pool // frame}
    assert vm_rss(server.proc.pid) - baseline < pool + (32 << 20)
    victim_is_served(server)
    filler.stop()


def test_a_user_holding_partial_frames_does_not_starve_another_users_frames(
    start_server: Callable[..., Server], attack: Callable[..., Attack]
) -> None:
    # With the pool for all alone, the attacker's partial frames filled it and every other
    # user's frame that spanned two reads was refused. Each uid gets a quarter (at least one
    # max_frame): the attacker keeps one, and another user (nobody) still sends a big frame.
    frame, pool = 15 << 20, 64 << 20
    server = start_server("a11y", max_connections=256, per_user=64, max_buffered_bytes=pool)
    filler = attack("fill", str(server.path), "6", str(frame))
    assert filler.result() == {"held": 1, "refused": 5}
    big = attack("bigframe", str(server.path), str(frame), user="nobody")
    # The frame is buffered whole and found not to be a message (-32600); the request after it
    # is answered.
    assert big.result() == {"Error-32600": 1, "Info": 1}
    filler.stop()
