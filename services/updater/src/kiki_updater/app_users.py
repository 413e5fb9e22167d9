"""The unprivileged uid each app's (and agent's) health command runs as, when the updater runs
as root: one per app, allocated on first use from a range no distribution or systemd hands out
(systemd's UIDS-GIDS.md leaves 0x70000000-0x7FFFFFFF unused), kept for good in
``<root>/uids.json`` (a removed app installed again gets its uid, and its kept ``data/``, back).
These uids have no passwd entry and no other group: they own the app's ``data/`` and nothing
else.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

import orjson

from kiki_updater.gio import fsync_dir
from libkiki.errors import LimitExceeded

__all__ = ["BASE", "SIZE", "AppUsers"]

BASE = 0x7E000000
SIZE = 0x10000

_LOCK = threading.Lock()


class AppUsers:
    def __init__(self, root: Path) -> None:
        self.path = root / "uids.json"

    def uid(self, kind: str, ident: str) -> int:
        """The app's uid (also its gid), allocated and made durable on first use."""
        key = f"{kind}/{ident}"
        with _LOCK, (self.path.parent / ".uids.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another updater process on the same root
            try:
                table: dict[str, int] = orjson.loads(self.path.read_bytes())
            except FileNotFoundError:
                table = {}
            if key in table:
                return int(table[key])
            uid = max(table.values(), default=BASE - 1) + 1
            if uid >= BASE + SIZE:
                raise LimitExceeded(f"no app uid left for {key}")
            table[key] = uid
            tmp = self.path.with_name(".uids.json.tmp")
            with tmp.open("wb") as f:
                f.write(orjson.dumps(table, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            fsync_dir(self.path.parent)
            return uid
