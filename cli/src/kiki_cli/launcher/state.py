"""``<runtime dir>/up.json``: what a running ``kiki up`` started, for ``kiki status`` and tests.

The supervisor writes it; reading it is apart so that ``kiki status`` does without the
supervisor's machinery (its processes, demos and backoff).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

STATE_FILE = "up.json"


def read_state(runtime_dir: Path) -> dict[str, Any] | None:
    """The running ``kiki up``'s state, or ``None`` when none is running there."""
    try:
        state: dict[str, Any] = orjson.loads((runtime_dir / STATE_FILE).read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    pid = state.get("pid")
    if not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return state
