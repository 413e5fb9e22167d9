"""MCP's tool surface as pure functions: version negotiation and result shapes. No I/O.

The broker speaks two generations of the Model Context Protocol over the same socket:

* the handshake revisions (2024-11-05 … 2025-11-25): ``initialize``, then requests, with
  ``notifications/tools/list_changed`` pushed to every initialized connection;
* the stateless revision 2026-07-28 (the current one): ``server/discover`` and the protocol
  version carried in each request's ``_meta``; results carry ``resultType`` and cache hints;
  ``list_changed`` goes only to ``subscriptions/listen`` streams that asked for it.
"""

from __future__ import annotations

import base64
from typing import Any, Final

import orjson

HANDSHAKE_VERSIONS: Final = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
MODERN_VERSIONS: Final = ("2026-07-28",)
CURRENT_VERSION: Final = MODERN_VERSIONS[-1]
PROTOCOL_VERSION_META: Final = "io.modelcontextprotocol/protocolVersion"
CALLER_META: Final = "dev.kiki/caller"
LIST_CHANGED: Final = "notifications/tools/list_changed"
# 2026-07-28: notifications outside a request travel on a subscriptions/listen stream.
LISTEN: Final = "subscriptions/listen"
ACKNOWLEDGED: Final = "notifications/subscriptions/acknowledged"
SUBSCRIPTION_ID_META: Final = "io.modelcontextprotocol/subscriptionId"

# Kiki's own methods on tools.sock, beside MCP's.
REGISTER: Final = "kiki/registerTools"
UNREGISTER: Final = "kiki/unregisterTools"


def negotiate(requested: object) -> str:
    """The handshake version to answer ``initialize`` with (MCP: echo it if supported, else
    offer our latest handshake revision and let the client decide)."""
    if isinstance(requested, str) and requested in HANDSHAKE_VERSIONS:
        return requested
    return HANDSHAKE_VERSIONS[-1]


def capabilities() -> dict[str, Any]:
    return {"tools": {"listChanged": True}}


def server_info(version: str) -> dict[str, Any]:
    return {"name": "kiki-tool-broker", "title": "Kiki tool broker", "version": version}


def initialize_result(requested: object, version: str, instructions: str) -> dict[str, Any]:
    return {
        "protocolVersion": negotiate(requested),
        "capabilities": capabilities(),
        "serverInfo": server_info(version),
        "instructions": instructions,
    }


def discover_result(version: str, instructions: str) -> dict[str, Any]:
    return {
        "supportedVersions": [*HANDSHAKE_VERSIONS, *MODERN_VERSIONS],
        "capabilities": capabilities(),
        "serverInfo": server_info(version),
        "instructions": instructions,
        "resultType": "complete",
        "ttlMs": 0,
        "cacheScope": "private",
    }


def honored(requested: object) -> dict[str, Any]:
    """The part of a ``subscriptions/listen`` filter the broker serves: the tool list only."""
    if isinstance(requested, dict) and requested.get("toolsListChanged") is True:
        return {"toolsListChanged": True}
    return {}


def on_stream(subscription: object, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Notification params tagged with the listen stream they belong to."""
    return {**(params or {}), "_meta": {SUBSCRIPTION_ID_META: subscription}}


def listen_result(subscription: object) -> dict[str, Any]:
    """The answer that ends a listen stream gracefully (the broker is shutting down)."""
    return {"resultType": "complete", "_meta": {SUBSCRIPTION_ID_META: subscription}}


def is_modern(meta: dict[str, Any] | None) -> bool:
    return meta is not None and meta.get(PROTOCOL_VERSION_META) in MODERN_VERSIONS


def list_result(
    tools: list[dict[str, Any]], modern: bool, next_cursor: str | None = None
) -> dict[str, Any]:
    result: dict[str, Any] = {"tools": tools}
    if next_cursor is not None:
        result["nextCursor"] = next_cursor
    if modern:
        # The list differs by caller (policy may hide nothing today, but may tomorrow): private.
        result.update(resultType="complete", ttlMs=0, cacheScope="private")
    return result


def encode_cursor(last: str) -> str:
    """An opaque page cursor: the last NSID of the page (pages are in NSID order, so a page
    boundary survives tools being added or removed in between)."""
    return base64.urlsafe_b64encode(last.encode()).decode().rstrip("=")


def decode_cursor(cursor: object) -> str | None:
    """The NSID a cursor stands for, or None when it is not one of ours."""
    if not isinstance(cursor, str) or not cursor or len(cursor) > 512:
        return None
    try:
        last = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return last if last and last.isprintable() else None


def call_result(structured: Any, modern: bool, text: bytes | None = None) -> dict[str, Any]:
    """A successful ``tools/call`` result: the output as text for models and as structure
    (``text``: the output already serialised); no content at all for no output."""
    result: dict[str, Any]
    if structured is None:  # a tool whose lexicon declares no output
        result = {"content": [], "isError": False}
    else:
        if text is None:
            text = orjson.dumps(structured)
        result = {
            "content": [{"type": "text", "text": text.decode()}],
            "structuredContent": structured,
            "isError": False,
        }
    if modern:
        result["resultType"] = "complete"
    return result


def tool_error_result(message: str, data: Any, modern: bool) -> dict[str, Any]:
    """A tool-level failure: MCP reports it as a result with ``isError`` so the model sees it."""
    result: dict[str, Any] = {"content": [{"type": "text", "text": message}], "isError": True}
    if data is not None:
        result["structuredContent"] = {"error": message, "data": data}
    if modern:
        result["resultType"] = "complete"
    return result
