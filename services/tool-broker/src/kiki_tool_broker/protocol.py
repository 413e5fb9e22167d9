"""MCP's tool surface as pure functions: version negotiation and result shapes. No I/O.

The broker speaks two generations of the Model Context Protocol over the same socket:

* the handshake revisions (2024-11-05 … 2025-11-25): ``initialize``, then requests, with
  ``notifications/tools/list_changed`` pushed to every initialized connection;
* the stateless revision 2026-07-28 (the current one): ``server/discover`` and the protocol
  version carried in each request's ``_meta``; results carry ``resultType``, cache hints and
  the server's identity in their own ``_meta``; ``list_changed`` goes only to
  ``subscriptions/listen`` streams that asked for it.

Result builders take ``modern``: the ``_meta`` a 2026-07-28 answer carries (:func:`result_meta`),
or None for an answer in the handshake era (:func:`era` tells which a request is).
"""

from __future__ import annotations

import base64
from typing import Any, Final

import orjson

from libkiki.errors import InvalidParams, UnsupportedVersion

# Kiki's _meta keys, shared with libkiki's client and provider (re-exported for the broker).
from libkiki.tools import CALLER_META as CALLER_META
from libkiki.tools import ERROR_DATA_META as ERROR_DATA_META

HANDSHAKE_VERSIONS: Final = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
MODERN_VERSIONS: Final = ("2026-07-28",)
CURRENT_VERSION: Final = MODERN_VERSIONS[-1]
SUPPORTED_VERSIONS: Final = (*HANDSHAKE_VERSIONS, *MODERN_VERSIONS)
PROTOCOL_VERSION_META: Final = "io.modelcontextprotocol/protocolVersion"
CLIENT_CAPABILITIES_META: Final = "io.modelcontextprotocol/clientCapabilities"
SERVER_INFO_META: Final = "io.modelcontextprotocol/serverInfo"
LIST_CHANGED: Final = "notifications/tools/list_changed"
# 2026-07-28: notifications outside a request travel on a subscriptions/listen stream.
LISTEN: Final = "subscriptions/listen"
ACKNOWLEDGED: Final = "notifications/subscriptions/acknowledged"
SUBSCRIPTION_ID_META: Final = "io.modelcontextprotocol/subscriptionId"

INSTRUCTIONS: Final = (
    "Tools of a Kiki device. Each tool's name is the NSID of its published lexicon; "
    "queries only read, procedures act on the device."
)

# Kiki's own methods on tools.sock, beside MCP's.
REGISTER: Final = "kiki/registerTools"
UNREGISTER: Final = "kiki/unregisterTools"
# kiki mcp handing a host's pipes to the broker (kiki_tool_broker.stdio); the names are also
# in kiki_cli.mcp, which cannot import the broker.
SERVE_STDIO: Final = "kiki/serveStdio"
STDIO_SEND: Final = "kiki/serveStdio/send"
STDIO_STARTED: Final = "kiki/serveStdio/started"


def negotiate(requested: object) -> str:
    """The handshake version to answer ``initialize`` with (MCP: echo it if supported, else
    offer our latest handshake revision and let the client decide)."""
    if isinstance(requested, str) and requested in HANDSHAKE_VERSIONS:
        return requested
    return HANDSHAKE_VERSIONS[-1]


def capabilities() -> dict[str, Any]:
    # Event streams are subscribable resources (kiki_tool_broker.mcp_resources).
    return {"tools": {"listChanged": True}, "resources": {"subscribe": True}}


def server_info(version: str) -> dict[str, Any]:
    return {"name": "kiki-tool-broker", "title": "Kiki tool broker", "version": version}


def initialize_result(requested: object, version: str, instructions: str) -> dict[str, Any]:
    return {
        "protocolVersion": negotiate(requested),
        "capabilities": capabilities(),
        "serverInfo": server_info(version),
        "instructions": instructions,
    }


def result_meta(version: str) -> dict[str, Any]:
    """The ``_meta`` of every 2026-07-28 result: who answered (MCP: servers SHOULD say so in
    every result, as nothing else carries it without a handshake)."""
    return {SERVER_INFO_META: server_info(version)}


def era(meta: dict[str, Any] | None, modern: dict[str, Any]) -> dict[str, Any] | None:
    """``modern`` (the result ``_meta``) for a request that speaks 2026-07-28, None for one of
    the handshake era (no version in its ``_meta``, or a handshake version).

    A version the broker does not speak is -32022 with the versions it does (MCP: the client
    picks one and retries); a 2026-07-28 request without the client capabilities it must
    carry is malformed, -32602.
    """
    if meta is None or (version := meta.get(PROTOCOL_VERSION_META)) is None:
        return None
    if version in MODERN_VERSIONS:
        if not isinstance(meta.get(CLIENT_CAPABILITIES_META), dict):
            raise InvalidParams(f"_meta.{CLIENT_CAPABILITIES_META} is required (an object)")
        return modern
    if version in HANDSHAKE_VERSIONS:
        return None
    data = {"supported": list(SUPPORTED_VERSIONS), "requested": version}
    raise UnsupportedVersion(data=data)


def discover_result(modern: dict[str, Any], instructions: str) -> dict[str, Any]:
    return {
        "supportedVersions": list(SUPPORTED_VERSIONS),
        "capabilities": capabilities(),
        "instructions": instructions,
        "resultType": "complete",
        "ttlMs": 0,
        "cacheScope": "private",
        "_meta": modern,
    }


def empty_result(modern: dict[str, Any] | None) -> dict[str, Any]:
    """A result with nothing to say (``ping``): ``{}``, or just its type and ``_meta``."""
    return {} if modern is None else {"resultType": "complete", "_meta": modern}


def honored(requested: object) -> dict[str, Any]:
    """The part of a ``subscriptions/listen`` filter the broker serves: the tool list only."""
    if isinstance(requested, dict) and requested.get("toolsListChanged") is True:
        return {"toolsListChanged": True}
    return {}


def on_stream(subscription: object, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Notification params tagged with the listen stream they belong to."""
    return {**(params or {}), "_meta": {SUBSCRIPTION_ID_META: subscription}}


def listen_result(subscription: object, modern: dict[str, Any] | None) -> dict[str, Any]:
    """The answer that ends a listen stream gracefully (the broker is shutting down)."""
    return {
        "resultType": "complete",
        "_meta": {**(modern or {}), SUBSCRIPTION_ID_META: subscription},
    }


def list_result(
    tools: list[dict[str, Any]], modern: dict[str, Any] | None, next_cursor: str | None = None
) -> dict[str, Any]:
    result: dict[str, Any] = {"tools": tools}
    if next_cursor is not None:
        result["nextCursor"] = next_cursor
    if modern is not None:
        # The list differs by caller (it holds what the caller's policy lets it call): private.
        result.update(resultType="complete", ttlMs=0, cacheScope="private", _meta=modern)
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


def call_result(
    structured: Any, modern: dict[str, Any] | None, text: bytes | None = None
) -> dict[str, Any]:
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
    if modern is not None:
        result["resultType"] = "complete"
        result["_meta"] = modern
    return result


def tool_error_result(message: str, data: Any, modern: dict[str, Any] | None) -> dict[str, Any]:
    """A tool-level failure: MCP reports it as a result with ``isError`` so the model sees it.

    No ``structuredContent``: where the tool has an outputSchema, MCP requires structured
    content to match it, and clients check (the TypeScript SDK 1.x throws, so the model never
    sees the error). The error's data goes in ``_meta["dev.kiki/errorData"]``.
    """
    result: dict[str, Any] = {"content": [{"type": "text", "text": message}], "isError": True}
    meta = modern
    if data is not None:
        meta = {**(modern or {}), ERROR_DATA_META: data}
    if modern is not None:
        result["resultType"] = "complete"
    if meta is not None:
        result["_meta"] = meta
    return result
