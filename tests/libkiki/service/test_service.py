"""The service runner in-process: what ``info()`` says and what systemd is told are one text.

The test plays systemd on a notify socket of its own and signals this very process; the runner
installs its handlers on the running loop, and removes them when it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kikitest import until
from libkiki import signals
from libkiki.errors import KikiError
from libkiki.service import ServiceContext, serve_until_stopped
from libkiki.sockets import Listeners
from libkiki.systemd import Notifier

pytestmark = pytest.mark.integration

KEPT = "reload failed, kept the previous configuration: "


async def test_status_text_is_the_status_line_at_start_reload_failure_and_stop(
    tmp_path: Path,
) -> None:
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(tmp_path / "notify"))
    manager.setblocking(False)
    loop = asyncio.get_running_loop()

    async def wait_for(key: str) -> dict[str, str]:
        while True:
            data = await loop.sock_recv(manager, 4096)
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            if key in fields:
                return fields

    broken = False
    ctx = ServiceContext(
        name="probe",
        version="0",
        listeners=Listeners([]),
        notifier=Notifier(str(tmp_path / "notify")),
    )

    @contextlib.asynccontextmanager
    async def serve(ctx: ServiceContext) -> AsyncIterator[None]:
        async def reload() -> None:
            if broken:
                raise KikiError("/etc/kiki/probe.toml: expected '=' (line 1)")

        ctx.reload_hooks.append(reload)
        ctx.status = "serving probe.sock"
        yield

    def status_text() -> str:
        text = ctx.info()["statusText"]
        assert isinstance(text, str)
        return text

    runner = asyncio.create_task(serve_until_stopped(ctx, serve, drain_timeout=5))
    try:
        async with asyncio.timeout(20):
            ready = await wait_for("READY")
            assert ready["STATUS"] == status_text() == ctx.status == "serving probe.sock"

            # A failed reload: systemd is told the previous configuration stays, and so is
            # anyone who asks the service itself.
            broken = True
            os.kill(os.getpid(), signal.SIGHUP)
            await wait_for("RELOADING")
            ready = await wait_for("READY")
            assert ready["STATUS"] == (
                f"serving probe.sock; {KEPT}/etc/kiki/probe.toml: expected '=' (line 1)"
            )
            assert status_text() == ctx.status == ready["STATUS"]

            # The service says something new: the failure still stands, in both places.
            ctx.status = "serving probe.sock, 2 peers"
            update = await wait_for("STATUS")
            assert update["STATUS"].startswith(f"serving probe.sock, 2 peers; {KEPT}")
            assert status_text() == ctx.status == update["STATUS"]

            # A reload that succeeds clears it.
            broken = False
            os.kill(os.getpid(), signal.SIGHUP)
            await wait_for("RELOADING")
            ready = await wait_for("READY")
            assert ready["STATUS"] == status_text() == ctx.status == "serving probe.sock, 2 peers"

            os.kill(os.getpid(), signal.SIGTERM)
            stopping = await wait_for("STOPPING")
            assert stopping["STATUS"] == status_text() == ctx.status == "draining"
            assert await runner == 0
            assert ctx.counters["reloads"] == 2
    finally:
        if not runner.done():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        manager.close()


def test_status_text_fits_its_lexicon_however_long_the_status() -> None:
    # A failed reload's note (with the policy file's path and error) once took statusText over
    # the lexicon's 256 graphemes, and getInfo then failed its own output check.
    ctx = ServiceContext("probe", "0", Listeners([]), Notifier(None))
    ctx._status = "serving probe.sock"
    ctx._reload_failure = "ConfigError: /etc/kiki/tool-policy.toml: " + "x" * 300
    text = ctx.info()["statusText"]
    assert len(text) == 256
    assert text == ctx.status[:255] + "…"
    ctx._reload_failure = None
    assert ctx.info()["statusText"] == "serving probe.sock"  # short ones are whole


def test_info_reports_the_pid_of_the_process_asking_also_in_a_forked_child() -> None:
    ctx = ServiceContext("probe", "0", Listeners([]), Notifier(None))
    assert ctx.info()["pid"] == os.getpid()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe, then exits
        try:
            os.write(write_end, f"{ctx.info()['pid']} {os.getpid()}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        reported, actual = pipe.read().decode().split()
    assert os.waitpid(child, 0)[1] == 0
    assert reported == actual == str(child)
    assert ctx.info()["pid"] == os.getpid()


# The loop's self-pipe and the process's signal wake-up fd are filled to the brim (as a loop
# that falls behind a 10 kHz SIGALRM fills them), then the process sends itself SIGTERM: the
# signal's byte cannot be written anywhere. The stop must still happen.
FULL_PIPES_THEN_SIGTERM = """
import asyncio, contextlib, os, signal, socket, sys
from libkiki.service import ServiceContext, serve_until_stopped
from libkiki.sockets import Listeners
from libkiki.systemd import Notifier

def fill(fd):
    s = socket.socket(fileno=os.dup(fd))
    s.setblocking(False)
    n = 0
    try:
        while True:
            s.send(b"\\0")
            n += 1
    except BlockingIOError:
        return n
    finally:
        s.close()

def full_then_sigterm():
    loop = asyncio.get_running_loop()
    pipe = fill(loop._csock.fileno())  # asyncio's self-pipe (a private name: a test only)
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup, warn_on_full_buffer=False)
    other = fill(wakeup) if wakeup not in (-1, loop._csock.fileno()) else 0
    print(f"filled {pipe} {other}", flush=True)
    # Delivered before kill() returns (a single-threaded process signalling itself).
    os.kill(os.getpid(), signal.SIGTERM)

@contextlib.asynccontextmanager
async def serve(ctx):
    asyncio.get_running_loop().call_soon(full_then_sigterm)
    yield

ctx = ServiceContext("probe", "0", Listeners([]), Notifier(None))
print("exit", asyncio.run(serve_until_stopped(ctx, serve, drain_timeout=2)), flush=True)
"""


def test_a_stop_is_not_lost_when_the_loops_wakeup_pipes_are_full() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", FULL_PIPES_THEN_SIGTERM],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Bounded: the drain timeout (2 s) and a generous start-up; lost, it would wait forever.
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"SIGTERM was lost: still running; said {out!r} {err!r}") from None
    lines = out.split("\n")
    filled = lines[0].split()
    assert filled[0] == "filled", out
    assert int(filled[1]) > 0, out  # the self-pipe really was full
    assert lines[1] == "exit 0", (out, err)
    assert proc.returncode == 0


async def test_a_flood_of_one_signal_runs_its_callback_once_per_turn() -> None:
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGUSR1)
    calls: list[int] = []
    ran = asyncio.Event()

    def callback() -> None:
        calls.append(1)
        ran.set()

    signals.add_signal_handler(loop, signal.SIGUSR1, callback)
    try:
        for _ in range(50):  # each delivered before kill() returns
            os.kill(os.getpid(), signal.SIGUSR1)
        async with asyncio.timeout(10):
            await ran.wait()
            ran.clear()
            assert calls == [1]  # fifty signals before it could run: one callback
            os.kill(os.getpid(), signal.SIGUSR1)
            await ran.wait()
            assert calls == [1, 1]  # and the next signal runs it again
    finally:
        assert signals.remove_signal_handler(loop, signal.SIGUSR1)
    assert signal.getsignal(signal.SIGUSR1) == previous
    assert not signals.remove_signal_handler(loop, signal.SIGUSR1)


# A 20 kHz interval timer whose every tick costs 200 µs: the loop can never catch up (as a
# publisher's 10 kHz IMU tick with four readers on a busy machine could not). Its signal comes
# through libkiki.signals, as the publisher's does: coalesced, so the loop still turns.
FLOODED_LOOP_THEN_SIGTERM = """
import asyncio, contextlib, os, signal, time
from libkiki import signals
from libkiki.service import ServiceContext, serve_until_stopped
from libkiki.sockets import Listeners
from libkiki.systemd import Notifier

ticks = 0

def tick():
    global ticks
    ticks += 1
    end = time.perf_counter() + 0.0002
    while time.perf_counter() < end:
        pass
    if ticks == 500:  # well behind by now: ask for the stop from inside the flood
        print("flooded", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

@contextlib.asynccontextmanager
async def serve(ctx):
    signals.add_signal_handler(asyncio.get_running_loop(), signal.SIGALRM, tick)
    signal.setitimer(signal.ITIMER_REAL, 0.00005, 0.00005)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)

ctx = ServiceContext("probe", "0", Listeners([]), Notifier(None))
print("exit", asyncio.run(serve_until_stopped(ctx, serve, drain_timeout=2)), flush=True)
"""


def test_a_stop_gets_through_a_loop_flooded_by_timer_signals() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", FLOODED_LOOP_THEN_SIGTERM],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=60)  # bounded; a lost stop would never end
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"SIGTERM was lost: still running; said {out!r}") from None
    assert out.split("\n")[:2] == ["flooded", "exit 0"], (out, err)
    assert proc.returncode == 0


async def test_a_signal_queued_before_its_handler_is_removed_does_not_run_after() -> None:
    # The IMU clock removes its SIGALRM handler when it hands the sampling to its thread; a
    # tick already queued must not run after that, or the ring would have two writers. (With
    # asyncio's add_signal_handler it would: the callback was queued, with the signal's byte,
    # in the loop turn before the removal; see the next test.)
    loop = asyncio.get_running_loop()
    calls: list[int] = []
    signals.add_signal_handler(loop, signal.SIGUSR1, lambda: calls.append(1))
    try:
        os.kill(os.getpid(), signal.SIGUSR1)  # handled (and its callback queued) at once
    finally:
        assert signals.remove_signal_handler(loop, signal.SIGUSR1)
    for _ in range(3):
        await asyncio.sleep(0)  # turns of the loop in which a queued callback would run
    assert calls == []


@pytest.mark.xfail(strict=True, reason="asyncio runs a signal callback queued before removal")
async def test_asyncio_runs_a_signal_callback_queued_before_the_removal() -> None:
    loop = asyncio.get_running_loop()
    calls: list[int] = []
    loop.add_signal_handler(signal.SIGUSR1, lambda: calls.append(1))
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        await asyncio.sleep(0)  # this turn reads the signal's byte and queues its callback,
        await asyncio.sleep(0)  # and this one resumes us before it runs
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
    for _ in range(3):
        await asyncio.sleep(0)
    assert calls == []


async def test_a_signal_does_not_fail_a_system_call_blocked_in_another_thread() -> None:
    # The kernel may deliver a process's signal to any thread; without SA_RESTART (which
    # asyncio's handlers set and ours first did not), a thread blocked in read(2) in C code got
    # EINTR instead of its data.
    import ctypes
    import threading

    libc = ctypes.CDLL(None, use_errno=True)
    loop = asyncio.get_running_loop()
    seen: list[tuple[int, int]] = []
    r, w = os.pipe()

    def blocked_read() -> None:
        buf = ctypes.create_string_buffer(1)
        seen.append((libc.read(r, buf, 1), ctypes.get_errno()))

    signals.add_signal_handler(loop, signal.SIGHUP, lambda: None)
    thread = threading.Thread(target=blocked_read)
    try:
        thread.start()
        assert thread.native_id is not None
        syscall = Path(f"/proc/self/task/{thread.native_id}/syscall")
        await until(lambda: syscall.read_text().split()[0] == "0", "the thread inside read(2)")
        signal.pthread_kill(thread.ident or 0, signal.SIGHUP)
        os.write(w, b"x")
        await asyncio.to_thread(thread.join, 20)
    finally:
        signals.remove_signal_handler(loop, signal.SIGHUP)
        os.close(r)
        os.close(w)
    assert seen == [(1, 0)]
