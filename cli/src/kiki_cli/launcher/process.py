"""Child processes of ``kiki up``: how they are started, watched and ended, as systemd would."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from libkiki.errors import Unavailable

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """A pre-exec hook: the kernel sends us SIGTERM when ``kiki up`` dies."""
    # If `kiki up` itself is killed (SIGKILL cannot be handled), its services must not live on
    # as orphans holding the sockets.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def pre_exec(fds: Sequence[int], umask: int) -> Callable[[], None]:
    """A pre-exec hook: die with the parent, take ``umask`` (the units' ``UMask=``), and put
    ``fds`` at 3, 4, … (sd_listen_fds)."""

    def prepare() -> None:
        die_with_parent()
        os.umask(umask)
        # Move them out of the way first: a target number may hold another of the sources.
        high = [os.dup(fd) for fd in fds]
        for i, fd in enumerate(high):
            os.dup2(fd, 3 + i, inheritable=True)
        for fd in high:
            if fd >= 3 + len(fds):
                os.close(fd)

    return prepare


async def pipe_lines(name: str, stream: asyncio.StreamReader) -> None:
    """Copy a child's log lines to our stderr, each prefixed with ``[name]``."""
    prefix = f"[{name}] "
    while line := await stream.readline():
        sys.stderr.write(prefix + line.decode(errors="replace"))
        sys.stderr.flush()


async def end_process(process: asyncio.subprocess.Process, stop_timeout: float) -> bool:
    """SIGTERM, then SIGKILL after ``stop_timeout`` (systemd's ``TimeoutStopSec=``); returns
    whether it had to be killed."""
    if process.returncode is not None:
        return False
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        async with asyncio.timeout(stop_timeout):
            await process.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        return True
    return False


async def first_set(*events: asyncio.Event, within: float | None = None) -> None:
    """Wait until one of ``events`` is set, or ``within`` seconds pass."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def bus_reachable(address: str | None) -> bool:
    if not address:
        return False
    for part in address.split(";"):
        if not part.startswith("unix:"):
            continue
        for kv in part[5:].split(","):
            key, _, value = kv.partition("=")
            if key == "path":
                return Path(value).exists()
            if key == "abstract":
                return True
    return False


async def start_private_bus(socket_path: Path) -> tuple[asyncio.subprocess.Process, str]:
    """A ``dbus-daemon --session`` listening at ``socket_path``; returns it and its address."""
    daemon = shutil.which("dbus-daemon")
    if daemon is None:
        raise Unavailable(
            "no session bus and no dbus-daemon to start one (apt-get install dbus-daemon)"
        )
    process = await asyncio.create_subprocess_exec(
        daemon,
        "--session",
        "--print-address=1",
        "--nofork",
        "--nopidfile",
        # A path in our directory rather than the config's abstract socket, which any local
        # user may connect to.
        f"--address=unix:path={socket_path}",
        stdout=asyncio.subprocess.PIPE,
        preexec_fn=die_with_parent,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(10):
            line = await process.stdout.readline()
    except BaseException:
        await end_process(process, 5)
        raise
    if not line:
        raise Unavailable("the private dbus-daemon exited before printing its address")
    return process, line.decode().strip()
