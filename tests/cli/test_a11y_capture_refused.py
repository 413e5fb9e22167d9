"""``kiki a11y capture`` whose subscription the a11y-server's policy refuses: the refusal (an
Error answering the Subscribe, the second frame on the connection) is the command's error, and
the capture file is left as it was (the Error used to be appended to it as a captured frame)."""

from __future__ import annotations

import asyncio
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from kikitest import VENV_BIN
from kikitest.a11y_fixtures import demo_env, form_tree
from libkiki.a11y import wire
from libkiki.a11y.publisher import A11yPublisher

pytestmark = pytest.mark.integration

Start = Callable[..., tuple[Path, subprocess.Popen[bytes]]]

# Root may name the apps it publishes; nobody (root included: deny rules name it too) may
# subscribe to the editor. Reading it stays allowed.
POLICY = """
[[publisher]]
principals = ["uid:0"]
apps = ["org.example.*"]

[[deny]]
principals = ["*"]
rights = ["subscribe"]
apps = ["org.example.Editor"]
"""


async def test_a_refused_capture_leaves_the_file_as_it_was(
    a11y_server: Start, sockdir: Path
) -> None:
    etc = sockdir / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "a11y-policy.toml").write_text(POLICY)
    path, _ = a11y_server()
    capture = sockdir / "frames.ka11"
    earlier = b"an earlier capture's frame"
    before = struct.pack("<I", len(earlier)) + earlier
    capture.write_bytes(before)
    async with A11yPublisher(path, label="editor") as pub:
        named = wire.App(0, "org.example.Editor", 4242, 0, "app-org.example.Editor.service")
        ack = await pub.request(wire.TreeUpdate(0, 0, 0, 0, 0, 1, tuple(form_tree()), (), 0, named))
        assert isinstance(ack, wire.Ack)
        proc = await asyncio.create_subprocess_exec(
            str(VENV_BIN / "kiki"),
            *("a11y", "--socket", str(path), "capture", str(capture)),
            *("--app", "org.example.Editor", "--count", "1"),
            env=demo_env(sockdir),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
    assert proc.returncode == 1
    said = err.decode()
    assert said.startswith("kiki a11y: "), said
    assert "may not subscribe to tree" in said, said
    assert "captured" not in said
    assert out == b""
    assert capture.read_bytes() == before
