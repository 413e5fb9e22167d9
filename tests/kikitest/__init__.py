"""Helpers and fixtures shared by the tests (importable: pyproject puts tests/ on pytest's path)."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
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


async def until(check: Callable[[], Any | Awaitable[Any]], what: str, within: float = 20.0) -> Any:
    """Ask ``check`` (sync or async) until its answer is truthy, and return that answer.

    For a condition held in another process, which no event of ours can signal; bounded by
    ``within`` seconds (an AssertionError naming ``what`` after it)."""
    try:
        async with asyncio.timeout(within):
            while True:
                answer = check()
                if inspect.isawaitable(answer):
                    answer = await answer
                if answer:
                    return answer
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {within:g} s: {what}") from None
