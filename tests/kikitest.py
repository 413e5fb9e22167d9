"""Helpers shared by the test tiers (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"


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
