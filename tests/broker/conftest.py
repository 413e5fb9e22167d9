"""Fixtures for the tool broker: the real broker process, and test lexicons for providers."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ECHO = "org.example.test.echo"
SLOW = "org.example.test.slow"
BAD_OUTPUT = "org.example.test.badOutput"
COUNT = "org.example.test.count"


def _procedure(
    nsid: str, input_props: dict[str, Any], output_props: dict[str, Any], required: list[str]
) -> dict[str, Any]:
    return {
        "lexicon": 1,
        "id": nsid,
        "defs": {
            "main": {
                "type": "procedure",
                "description": f"Test tool {nsid}.",
                "input": {
                    "encoding": "application/json",
                    "schema": {"type": "object", "required": required, "properties": input_props},
                },
                "output": {
                    "encoding": "application/json",
                    "schema": {"type": "object", "required": ["text"], "properties": output_props},
                },
            }
        },
    }


TEXT = {"text": {"type": "string", "maxGraphemes": 16}}
LEXICONS = [
    _procedure(
        ECHO,
        {
            "text": {"type": "string", "maxGraphemes": 16},
            "delay": {"type": "integer", "minimum": 0},
        },
        TEXT,
        ["text"],
    ),
    _procedure(SLOW, {}, TEXT, []),
    _procedure(BAD_OUTPUT, {}, TEXT, []),
    _procedure(COUNT, {"to": {"type": "integer", "minimum": 1, "maximum": 100}}, TEXT, ["to"]),
]
LEXICONS[3]["defs"]["destructive"] = {"type": "token", "description": "Counts loudly."}


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
