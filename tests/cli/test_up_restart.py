"""`kiki up`'s restart wait grows while a service keeps dying, and is back to its minimum
once the service has been ready for 10 s (libkiki.backoff, wired to READY=1)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from kikitest import VENV_BIN

pytestmark = pytest.mark.integration

HEALTHY_AFTER = 10.0  # libkiki.backoff.DEFAULT_STABLE_AFTER


def broker(rundir: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((rundir / "up.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    found: dict[str, Any] = state["services"]["tool-broker"]
    return found


def ready_broker(rundir: Path, restarts: int, proc: subprocess.Popen[str]) -> int:
    """Wait (bounded) until the broker is ready after ``restarts`` restarts; its pid."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "kiki up ended"
        found = broker(rundir)
        if found and found["state"] == "ready" and found["restarts"] == restarts:
            pid: int = found["pid"]
            return pid
        time.sleep(0.05)
    raise AssertionError(f"the broker was not ready after {restarts} restarts within 60s")


def test_the_wait_is_back_to_the_minimum_after_a_healthy_run(
    sockdir: Path, service_env: dict[str, str]
) -> None:
    rundir = sockdir / "run"
    proc = subprocess.Popen(
        [
            str(VENV_BIN / "kiki"),
            "up",
            "tool-broker",
            "--no-demo",
            "--runtime-dir",
            str(rundir),
            "--state-dir",
            str(sockdir / "state"),
        ],
        env=service_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        for restarts in range(3):  # killed soon after each start: 0.5 s, 1 s, 2 s
            os.kill(ready_broker(rundir, restarts, proc), signal.SIGKILL)
        pid = ready_broker(rundir, 3, proc)
        # Not a synchronisation: being healthy for a length of time is what is under test.
        # It was ready at the latest when we saw it so.
        time.sleep(HEALTHY_AFTER + 0.5)
        os.kill(pid, signal.SIGKILL)
        ready_broker(rundir, 4, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        assert proc.stdout is not None
        output = proc.stdout.read()
        proc.stdout.close()
    waits = [
        line.rsplit(" ", 1)[1]
        for line in output.splitlines()
        if line.startswith("tool-broker exited with status -9; restarting in ")
    ]
    assert waits == ["0.5s", "1.0s", "2.0s", "0.5s"], output
