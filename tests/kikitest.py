"""Helpers shared by the test tiers (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The venv of the interpreter running the tests (.venv, or .venv-3.13 for the image's Python):
# every process a test starts runs the Python under test, not whichever venv happens to exist.
VENV_BIN = Path(sys.executable).parent


def kiki(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The ``kiki`` command line of the venv under test, run to its end (60 s at most)."""
    return subprocess.run(
        [str(VENV_BIN / "kiki"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
        check=False,
    )
