"""Drives ``browser.mjs`` beside it: Debian's chromium under playwright-core, one Node
process for any number of pages, read by a thread so any event loop may use it. The
dashboard's browser tests (the relay's and ``kiki up``'s) share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import queue
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

NODE_DIR = Path(__file__).resolve().parent
ROOT = NODE_DIR.parents[2]
TIMEOUT = 30.0


def chromium() -> str:
    found = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(found).exists():
        raise RuntimeError("chromium is not installed (scripts/install-test-deps installs it)")
    return found


# Where a run's artefacts go unless KIKI_TEST_ARTIFACTS says: in the checkout (git ignores
# /build/), so a person finds the screenshots after the run rather than in a pytest tmp dir.
DEFAULT_ARTEFACTS = ROOT / "build" / "test-artifacts"


def artefacts(test: str | os.PathLike[str] = "") -> Path:
    """Where screenshots go: ``$KIKI_TEST_ARTIFACTS/dashboard`` (default
    ``build/test-artifacts/dashboard``), in a folder named for ``test`` when given (a name, or
    a test's tmp_path, whose last part names the test)."""
    root = Path(os.environ.get("KIKI_TEST_ARTIFACTS") or DEFAULT_ARTEFACTS)
    name = Path(test).name if test else ""
    where = root / "dashboard" / name if name else root / "dashboard"
    where.mkdir(parents=True, exist_ok=True)
    return where


@contextlib.contextmanager
def screenshots(test: str, terminal: contextlib.AbstractContextManager[Any]) -> Iterator[Path]:
    """The folder for ``test``'s screenshots (emptied of an earlier run's), and, once it is
    done, their list printed to the terminal: ``terminal`` is ``capsys.disabled()``, so the
    list shows in a run without ``-s`` too."""
    where = artefacts(test)
    for old in where.glob("*.png"):
        old.unlink()
    try:
        yield where
    finally:
        taken = sorted(where.glob("*.png"))
        if taken:
            with terminal:
                print(f"\nscreenshots of {test}:", *(f"  {p}" for p in taken), sep="\n")


class Browser:
    """A chromium; ``await call(op, **args)`` runs one of browser.mjs's ops."""

    def __init__(self) -> None:
        subprocess.run(
            [str(ROOT / "scripts" / "install-node-deps"), str(NODE_DIR.relative_to(ROOT))],
            check=True,
            timeout=600,
        )
        self.proc = subprocess.Popen(
            ["node", str(NODE_DIR / "browser.mjs")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._ids = itertools.count(1)
        self._answers: dict[int, queue.SimpleQueue[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            message = json.loads(line)
            if "id" in message:
                with self._lock:
                    box = self._answers.get(message["id"])
                if box is not None:
                    box.put(message)
            else:
                self.events.append(message)

    async def call(self, op: str, **args: Any) -> Any:
        rid = next(self._ids)
        box: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        with self._lock:
            self._answers[rid] = box
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"id": rid, "op": op, **args}) + "\n")
        self.proc.stdin.flush()
        try:
            # An op given its own timeout (ms) is waited for that long, and then some.
            within = TIMEOUT + float(args.get("timeout", 0)) / 1000
            answer = await asyncio.to_thread(box.get, timeout=within)
        finally:
            with self._lock:
                del self._answers[rid]
        if "error" in answer:
            raise AssertionError(f"browser {op} {args}: {answer['error']}\n{self.page_log()}")
        return answer.get("result")

    def page_log(self) -> str:
        """What the pages logged (console and errors): shown when an op fails."""
        return "\n".join(
            f"  [{e.get('page')}] {e.get('type', e['event'])}: {e.get('text')}" for e in self.events
        )

    def errors(self) -> list[str]:
        return [str(e["text"]) for e in self.events if e["event"] == "pageerror"]

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
