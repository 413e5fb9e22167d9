"""Calling and providing tools on the device's tool broker (``tools.sock``).

Agents call tools and follow event streams with :class:`ToolClient`
(:mod:`libkiki.tools.client`); apps serve them with :class:`ToolProvider`, a decorated async
function per tool NSID and an async generator per stream NSID (:mod:`libkiki.tools.provider`).
Both speak MCP over the broker's Unix socket; what they share with the broker, the handshake and
the ``_meta`` keys, is :mod:`libkiki.tools.wire`. Event streams themselves are
:mod:`libkiki.streams_client` and :mod:`libkiki.streams_provider`.

The broker sits between the two: it validates every call's input against the lexicon before it
reaches the provider and the output after, and it tells the provider the caller's identity as
the kernel gave it, so that neither side has to trust the other's claims.
"""

from __future__ import annotations

from libkiki.streams_client import Ended, Event, Lost, Status, Subscription
from libkiki.streams_provider import StreamContext
from libkiki.tools.client import ToolClient
from libkiki.tools.provider import ToolCall, ToolFunc, ToolProvider
from libkiki.tools.wire import (
    CALLER_META,
    CLIENT_INFO,
    ERROR_DATA_META,
    HANDSHAKE_VERSION,
    IDEMPOTENCY_KEY_META,
    ON_BEHALF_OF_META,
)

__all__ = [
    "CALLER_META",
    "CLIENT_INFO",
    "ERROR_DATA_META",
    "HANDSHAKE_VERSION",
    "IDEMPOTENCY_KEY_META",
    "ON_BEHALF_OF_META",
    "Ended",
    "Event",
    "Lost",
    "Status",
    "StreamContext",
    "Subscription",
    "ToolCall",
    "ToolClient",
    "ToolFunc",
    "ToolProvider",
]
