"""Fixtures for the tool broker: the real broker process."""

from __future__ import annotations

import pwd
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kikitest.second_user import attacker_account


@pytest.fixture
def broker(
    request: pytest.FixtureRequest, sockdir: Path, spawn_service: Any
) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """The real kiki-tool-broker, bound by hand in ``sockdir``, with a 2 s provider timeout.

    Parametrize it indirectly with a dict of environment variables to change its limits.
    """
    (sockdir / "etc").mkdir(exist_ok=True)
    env = {"KIKI_TOOL_BROKER_CALL_TIMEOUT": "2", **getattr(request, "param", {})}
    proc, notes = spawn_service("tool-broker", extra_env=env)
    notes.wait_for("READY")
    yield sockdir / "tools.sock", proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


@pytest.fixture(scope="session")
def attacker() -> pwd.struct_passwd:
    """A second Unix user, ``kiki-test-attacker`` (made if missing): see second_user.run_as."""
    return attacker_account()
