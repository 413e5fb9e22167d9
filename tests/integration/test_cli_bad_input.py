"""``kiki`` commands given arguments they cannot use end with a message and a non-zero status,
never a traceback (each of these printed one)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from a11y_fixtures import demo_env, form_tree
from kikitest import VENV_BIN, kiki
from libkiki.a11y.publisher import A11yPublisher


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["status", "--relay", "garbage"], "--relay: must be HOST:PORT"),
        (["status", "--relay", "127.0.0.1:99999"], "--relay: must be HOST:PORT"),
        (["status", "--runtime-dir", "/etc/passwd"], "/etc/passwd is not a directory"),
        (["a11y", "--socket", "/nonexistent.sock", "capture", "/tmp"], "/tmp: Is a directory"),
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
