"""``kiki a11y watch`` follows the a11y-server through a SIGKILL and a restart, and says so;
when the server does not come back, it exits 1 with the reason (it used to exit 0 without a
word at the server's first death)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from kikitest import VENV_BIN
from kikitest.a11y_fixtures import R, demo_env, form_tree
from libkiki.a11y import wire
from libkiki.a11y.publisher import A11yPublisher

pytestmark = pytest.mark.integration

Start = Callable[..., tuple[Path, subprocess.Popen[bytes]]]


async def start_watch(sockdir: Path, *options: str) -> tuple[asyncio.subprocess.Process, Path]:
    err = sockdir / "watch.stderr"
    with err.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            str(VENV_BIN / "kiki"),
            *("a11y", "--socket", str(sockdir / "a11y.sock"), "watch", *options),
            env=demo_env(sockdir),
            stdout=asyncio.subprocess.PIPE,
            stderr=sink,
        )
    return proc, err


async def next_line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        line = await proc.stdout.readline()
    assert line, "kiki a11y watch ended"
    return line.decode()


async def test_watch_follows_the_server_through_kills(a11y_server: Start, sockdir: Path) -> None:
    path, server = a11y_server()
    async with A11yPublisher(path) as pub:
        await pub.publish(form_tree(), root_id=1)
        watch, err = await start_watch(sockdir)
        try:
            assert (await next_line(watch)).startswith("snapshot: 1 trees")
            for round_ in range(3):
                server.send_signal(signal.SIGKILL)
                server.wait(timeout=30)
                path, server = a11y_server()
                # The new server knows no tree yet: the watch goes on from its snapshot.
                assert (await next_line(watch)).startswith("snapshot: 0 trees")
                said = err.read_text()
                assert said.count("the a11y-server went away; reconnecting") == round_ + 1
                assert said.count("reconnected to the a11y-server") == round_ + 1
                async with A11yPublisher(path) as again:
                    await again.publish([wire.Node(1, R["button"], f"Round {round_}")], root_id=1)
                    line = await next_line(watch)
                    while f'"Round {round_}"' not in line:  # the tree's updates, in order
                        line = await next_line(watch)
                # The publisher's leaving is news too, before the next kill.
                assert (await next_line(watch)).endswith(" gone\n")
            assert watch.returncode is None
        finally:
            if watch.returncode is None:
                watch.terminate()
            await watch.wait()


async def test_watch_exits_1_with_the_reason_when_the_server_stays_away(
    a11y_server: Start, sockdir: Path
) -> None:
    _, server = a11y_server()
    watch, err = await start_watch(sockdir, "--reconnect", "1")
    try:
        assert (await next_line(watch)).startswith("snapshot: 0 trees")
        server.send_signal(signal.SIGKILL)
        async with asyncio.timeout(30):
            assert await watch.wait() == 1
        said = err.read_text()
        assert "the a11y-server went away; reconnecting" in said
        assert "kiki a11y: the a11y-server did not come back within 1 s" in said
        assert "Traceback" not in said
    finally:
        if watch.returncode is None:
            watch.kill()
        await watch.wait()


async def test_capture_says_when_the_server_went_away(a11y_server: Start, sockdir: Path) -> None:
    # It printed "captured N frames" and exited 0, as if it had captured what was asked.
    _, server = a11y_server()
    capture = sockdir / "frames.ka11"
    err = sockdir / "capture.stderr"
    with err.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            str(VENV_BIN / "kiki"),
            *("a11y", "--socket", str(sockdir / "a11y.sock"), "capture", str(capture)),
            env=demo_env(sockdir),
            stderr=sink,
        )
    try:
        async with asyncio.timeout(30):
            while not (capture.exists() and capture.stat().st_size):  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # its first frame (the snapshot) is written
        server.send_signal(signal.SIGKILL)
        async with asyncio.timeout(30):
            assert await proc.wait() == 1
        assert err.read_text() == (
            f"kiki a11y capture: the a11y-server went away; captured 1 frames to {capture}\n"
        )
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
