"""OSTree test material: app trees, commits in real repositories, a static HTTP server.

Everything here builds real repositories with libostree (through the updater's lazy loader);
nothing stands in for OSTree.
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "count_requests",
    "make_app_tree",
    "serve_dir",
    "write_manifest",
]


def write_manifest(tree: Path, app_id: str, version: str, **extra: Any) -> None:
    manifest = {"id": app_id, "version": version, **extra}
    (tree / "kiki-app.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))


def make_app_tree(
    tree: Path, app_id: str, version: str, *, files: int = 20, size: int = 512, salt: str = ""
) -> Path:
    """An app directory of ``files`` files of ``size`` bytes in a few subdirectories, with a
    manifest; ``salt`` changes every file's content (a different build)."""
    tree.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        sub = tree / "lib" / f"m{i % 16:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        seed = f"{salt}{i}".encode()
        block = (seed * (size // len(seed) + 1))[:size]
        (sub / f"f{i:05d}.py").write_bytes(block)
    (tree / "bin").mkdir(exist_ok=True)
    run = tree / "bin" / "run"
    run.write_text("#!/bin/sh\necho running\n")
    run.chmod(0o755)
    write_manifest(tree, app_id, version)
    return tree


class _Quiet(http.server.SimpleHTTPRequestHandler):
    counter: dict[str, int]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def copyfile(self, source: Any, outputfile: Any) -> None:
        # Count what is sent, so that tests and the benchmark can read the bytes a pull took.
        while chunk := source.read(1 << 16):
            outputfile.write(chunk)
            self.counter["bytes"] += len(chunk)
        self.counter["requests"] += 1


@contextmanager
def serve_dir(root: Path) -> Iterator[tuple[str, dict[str, int]]]:
    """A static HTTP server on 127.0.0.1 publishing ``root`` (in a thread): its URL and a
    counter of bytes and requests served."""
    counter = {"bytes": 0, "requests": 0}
    handler = type("Handler", (_Quiet,), {"counter": counter})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=os.fspath(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", counter
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def count_requests(counter: dict[str, int]) -> tuple[int, int]:
    return counter["bytes"], counter["requests"]
