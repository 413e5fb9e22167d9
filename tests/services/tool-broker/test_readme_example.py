"""The tool broker README's provider and agent, run as written against the real broker."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kikitest import REPO

pytestmark = pytest.mark.integration

README = REPO / "services" / "tool-broker" / "README.md"


def example(name: str) -> str:
    """The README's ```python block introduced by the line that names ``name`` (`agent.py`)."""
    text = README.read_text()
    found = re.search(rf"`{re.escape(name)}`[^\n]*:\n\n```python\n(.*?)\n```", text, re.S)
    assert found, f"the README has no example {name}"
    return found.group(1)


def test_the_readme_provider_and_agent_run_as_written(
    broker: tuple[Path, Any], service_env: dict[str, str]
) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", example("provider.py")],
        env=service_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as provider:
        try:
            assert provider.stdout is not None
            assert provider.stdout.readline() == "serving org.example.echo\n"
            agent = subprocess.run(
                [sys.executable, "-c", example("agent.py")],
                env=service_env,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert agent.returncode == 0, agent.stderr
            assert agent.stdout == "{'text': 'hi'}\nfailed: nothing to say back\n"
        finally:
            provider.terminate()
            provider.wait(timeout=30)
