"""What both sides of a connection to the tool broker share: where its socket is, the
handshake, and the ``_meta`` keys the broker, its clients and its providers read and write."""

from __future__ import annotations

import os
from pathlib import Path

from libkiki.paths import TOOLS_SOCKET, socket_path

CLIENT_INFO = {"name": "libkiki", "version": "0"}
HANDSHAKE_VERSION = "2025-11-25"
CALLER_META = "dev.kiki/caller"  # the caller's kernel-given identity, on a forwarded call
ERROR_DATA_META = "dev.kiki/errorData"  # a tool error's data (its structuredContent cannot)
# A retried call's key: the broker answers a repeat with the first call's answer.
IDEMPOTENCY_KEY_META = "dev.kiki/idempotencyKey"
# The remote person a trusted delegate calls for ({"subject": ..., "session": ...}); on a
# forwarded call, the broker tells the provider the same, beside the caller.
ON_BEHALF_OF_META = "dev.kiki/onBehalfOf"


def broker_socket(path: str | os.PathLike[str] | None) -> Path:
    """``path``, or the broker's socket (``tools.sock``) when it is None."""
    return Path(path) if path is not None else socket_path(TOOLS_SOCKET)
