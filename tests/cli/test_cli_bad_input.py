"""``kiki`` commands given arguments they cannot use end with a message and a non-zero status,
never a traceback (each of these printed one)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from kikitest import VENV_BIN, kiki
from kikitest.a11y_fixtures import demo_env, form_tree
from libkiki.a11y.publisher import A11yPublisher

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["status", "--relay", "garbage"], "--relay: must be HOST:PORT"),
        (["status", "--relay", "127.0.0.1:99999"], "--relay: must be HOST:PORT"),
        (["status", "--runtime-dir", "/etc/passwd"], "/etc/passwd is not a directory"),
        (["a11y", "--socket", "/nonexistent.sock", "capture", "/tmp"], "/tmp: Is a directory"),
        (["a11y", "--timeout", "1e308", "act", "1:1", "press"], "--timeout: must be seconds"),
        (["a11y", "--timeout", "nan", "dump"], "--timeout: must be seconds"),
        (["a11y", "find", "--limit", "-1", "role=button"], "--limit: must be a whole number"),
        (["a11y", "find", "--limit", "99999999999", "role=button"], "--limit: must be a whole"),
        (["tools", "call", "x.y.z", "--timeout", "0"], "--timeout: must be seconds"),
        (["status", "--timeout", "-1"], "--timeout: must be seconds"),
        (["a11y", "watch", "--reconnect", "nan"], "--reconnect: must be seconds"),
        (["a11y", "watch", "--reconnect", "-1"], "--reconnect: must be seconds"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_unusable_arguments_are_refused_with_a_message(args: list[str], said: str) -> None:
    result = kiki(*args)
    assert result.returncode in (1, 2)
    assert said in result.stderr
    assert "Traceback" not in result.stderr


async def test_capture_to_a_full_disk_says_so(
    a11y_server: Callable[..., tuple[Path, subprocess.Popen[bytes]]], sockdir: Path
) -> None:
    path, _ = a11y_server()
    async with A11yPublisher(path) as pub:
        await pub.publish(form_tree(), root_id=1)
        proc = await asyncio.create_subprocess_exec(
            str(VENV_BIN / "kiki"),
            *("a11y", "--socket", str(path), "capture", "/dev/full"),
            stderr=asyncio.subprocess.PIPE,
            env=demo_env(sockdir),
        )
        async with asyncio.timeout(60):
            _, err = await proc.communicate()
    assert proc.returncode == 1
    assert err.decode() == "kiki a11y capture: /dev/full: No space left on device\n"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["act", "99999999999999999999999:1", "press"], "is not a node reference"),
        (["act", "1:-1", "setValue", "x"], "is not a node reference"),
        (["find", "state=nope"], "unknown state 'nope' (one of focused"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
async def test_a11y_arguments_the_wire_cannot_carry_are_refused(
    a11y_server: Callable[..., tuple[Path, subprocess.Popen[bytes]]],
    sockdir: Path,
    args: list[str],
    said: str,
) -> None:
    path, _ = a11y_server()
    proc = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "kiki"),
        *("a11y", "--socket", str(path), *args),
        stderr=asyncio.subprocess.PIPE,
        env=demo_env(sockdir),
    )
    async with asyncio.timeout(60):
        _, err = await proc.communicate()
    assert proc.returncode == 1
    assert said in err.decode()
    assert "Traceback" not in err.decode()


@pytest.mark.parametrize("follow", [[], ["--follow"]], ids=["", "--follow"])
def test_tools_log_refuses_a_file_that_is_not_a_regular_file(
    tmp_path: Path, follow: list[str]
) -> None:
    # A FIFO blocked the reader until a writer came (and /dev/zero was read until memory ran
    # out): an audit log is a regular file.
    fifo = tmp_path / "audit.jsonl"
    os.mkfifo(fifo)
    result = subprocess.run(
        [str(VENV_BIN / "kiki"), "tools", "log", "--file", str(fifo), *follow],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == f"kiki tools: {fifo}: is not a regular file\n"


def test_validate_from_a_closed_stdin_says_so() -> None:
    result = subprocess.run(
        [str(VENV_BIN / "kiki"), "schema", "validate", "dev.kiki.demo.echo#main", "-"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.close(0),
    )
    assert result.returncode == 2  # kiki schema's status for input it cannot use
    assert "stdin: is closed" in result.stderr
    assert "Traceback" not in result.stderr
