"""Reading lexicon files from disk: only regular files, of a bounded size, found by a walk that
neither recurses nor stops at a directory it cannot read. Every problem is a
:class:`~libkiki.errors.LexiconError` naming the file, never an ``OSError``."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any, Final

import orjson

from libkiki.errors import LexiconError

__all__ = ["MAX_FILE", "json_files", "read_json_file"]

# The largest file read as a document (or as data to validate). Published lexicons are tens of
# KiB; without a bound, `kiki schema lint /dev/zero` would read until memory ran out.
MAX_FILE: Final = 4 << 20


def read_json_file(path: Path, limit: int = MAX_FILE) -> Any:
    """The JSON value in the file at ``path``, or a :class:`LexiconError` saying why there is
    none: unreadable, a symbolic link (the updater reads an app's files as root: a link would
    read whatever it points at), not a regular file (a FIFO would block the reader for ever),
    over ``limit`` bytes, not JSON."""

    def refuse(rule: str) -> LexiconError:
        return LexiconError(str(path), "", rule)

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise refuse("is a symbolic link") from None
        raise refuse(f"cannot be read: {exc.strerror or exc}") from None
    with open(fd, "rb") as f:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise refuse("is not a regular file")
            data = f.read(limit + 1)
        except OSError as exc:
            raise refuse(f"cannot be read: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise refuse(f"is larger than {limit >> 20} MiB")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise refuse(f"cannot be read as JSON: {exc}") from None


def json_files(root: Path, errors: list[LexiconError]) -> list[Path]:
    """Every ``*.json`` under ``root``, sorted, not through symlinked directories (as
    ``rglob``, which recursed: a tree nested a thousand deep ended in a RecursionError, and a
    directory removed while it walked, in a FileNotFoundError). An unreadable one is a problem."""
    found: list[Path] = []
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(Path(entry.path))
                    elif entry.name.endswith(".json"):
                        found.append(Path(entry.path))
        except OSError as exc:
            errors.append(LexiconError(str(directory), "", f"cannot be read: {exc.strerror}"))
    return sorted(found)
