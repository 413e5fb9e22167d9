"""The names the updater builds paths and refs from, checked whole (``fullmatch``: a ``$``
would let a trailing newline through into a path or a ref)."""

from __future__ import annotations

import re

__all__ = ["is_id", "is_name"]

# a remote, a channel, an export destination
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# an app or agent id: a reverse-DNS name
ID = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,62}(\.[A-Za-z0-9-]{1,63}){1,15}")


def is_name(text: str) -> bool:
    return NAME.fullmatch(text) is not None


def is_id(text: str) -> bool:
    return ID.fullmatch(text) is not None
