"""A second Unix user for the security tests: a throw-away system user, and a way to run code as
it in a real process of its own (a forked child that drops to its uid, gid and no other groups).

The child cannot read the interpreter's standard library (it lives under /root here), so
everything it uses must be imported before the fork: this module imports what the attacks use.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import select
import subprocess
import time
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

import libkiki.a11y.client
import libkiki.tools

ATTACKER = "kiki-test-attacker"


def attacker_account() -> pwd.struct_passwd:
    """The throw-away user, made if missing (``useradd --system --no-create-home``)."""
    if os.geteuid() != 0:
        pytest.skip("becoming a second Unix user needs root")
    try:
        return pwd.getpwnam(ATTACKER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", ATTACKER],
            check=True,
            timeout=30,
        )
        return pwd.getpwnam(ATTACKER)


def open_to_others(*paths: Path) -> None:
    """Let another user reach a socket in a test's directory, as members of ``kiki`` reach
    ``/run/kiki/*.sock`` (0660 root:kiki) on a device."""
    for path in paths:
        os.chmod(path, 0o711 if path.is_dir() else 0o666)


def run_as(
    user: pwd.struct_passwd,
    attack: Callable[[], Coroutine[Any, Any, Any]],
    *,
    timeout: float = 30.0,
) -> Any:
    """Run the coroutine ``attack()`` in a child process that has become ``user``; returns what
    it returned (JSON), plus the warnings libkiki logged in it under ``"log"`` when it returned
    a dict. An exception in the child fails the test with the child's traceback."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 0
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            records: list[str] = []
            handler = _Collect(records)
            logging.getLogger("libkiki").addHandler(handler)
            result = asyncio.run(attack())
            if isinstance(result, dict):
                result["log"] = records
            out = json.dumps({"ok": result}).encode()
        except BaseException:
            out = json.dumps({"error": traceback.format_exc()}).encode()
            status = 1
        try:
            view = memoryview(out)
            while view:
                view = view[os.write(write_end, view) :]
        finally:
            os._exit(status)
    os.close(write_end)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_end], [], [], left)[0]:
                os.kill(pid, 9)
                raise AssertionError(f"the second user's process did not end within {timeout}s")
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    answer = json.loads(b"".join(chunks))
    if "error" in answer:
        raise AssertionError(f"the second user's process failed:\n{answer['error']}")
    return answer["ok"]


class _Collect(logging.Handler):
    def __init__(self, records: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


__all__ = ["ATTACKER", "attacker_account", "libkiki", "open_to_others", "run_as"]
