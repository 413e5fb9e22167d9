"""What a call's answer is, as pure functions: the MCP result for a tool's output or failure,
and the audit outcome (and counter) of an error. No I/O."""

from __future__ import annotations

from typing import Any, Final

import orjson

from kiki_tool_broker import protocol as mcp
from kiki_tool_broker.registry import Tool
from kiki_tool_broker.schemas import ToolSchema
from libkiki.errors import (
    Cancelled,
    InvalidParams,
    KikiError,
    LimitExceeded,
    NotFound,
    PeerGone,
    PermissionDenied,
    Timeout,
    ValidationError,
)

ANSWER_SLACK: Final = 4096  # bytes of an answer besides a tool's output twice (id, keys, _meta)

# (the caller's result, the audit outcome, the audit code)
Settled = tuple[dict[str, Any], str, int | None]

OUTCOMES: Final = (
    "ok",
    "error",
    "denied",
    "invalid",
    "timeout",
    "provider-gone",
    "cancelled",
    "internal-error",
    "replay",  # a retry answered with the first call's answer (an idempotency key)
)
# getInfo's counter of each audit outcome.
COUNTERS: Final = {outcome: f"calls_{outcome}" for outcome in OUTCOMES}


class ToolFailure(Exception):
    """The tool ran (or its provider answered) and failed: an ``isError`` result, not an error."""

    def __init__(self, message: str, code: int | None, data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.data = data


def outcome_of(exc: Exception) -> tuple[str, int | None]:
    """The audit outcome and code of a call that failed with ``exc``."""
    match exc:
        case PermissionDenied():
            outcome = "denied"
        case InvalidParams():
            outcome = "invalid"
        case Timeout():
            outcome = "timeout"
        case PeerGone():
            outcome = "provider-gone"
        case Cancelled():
            outcome = "cancelled"
        case KikiError():
            outcome = "error"
        case _:
            return "internal-error", -32603
    return outcome, exc.jsonrpc_code


def provider_output(tool: Tool, reply: Any) -> Any:
    """A provider's ``tools/call`` result: its structured content, or a ToolFailure."""
    if not isinstance(reply, dict):
        raise ToolFailure(
            f"{tool.provider.name} answered {tool.nsid} with a malformed result", -32603, None
        )
    if reply.get("isError"):
        text = _text_of(reply) or f"{tool.nsid} failed"
        # Its detail: where Kiki puts it, else whatever structure an MCP server sent with it.
        meta = reply.get("_meta")
        data = meta.get(mcp.ERROR_DATA_META) if isinstance(meta, dict) else None
        raise ToolFailure(text, None, reply.get("structuredContent") if data is None else data)
    return reply.get("structuredContent")


def provider_result(
    tool: Tool,
    schema: ToolSchema,
    modern: dict[str, Any] | None,
    room: int,
    call_timeout: float,
    reply: Any,
    error: BaseException | None,
) -> Settled:
    """The caller's result for the provider's reply, or for the error its call ended in.

    A timeout and the provider leaving are the call's own errors, raised (reworded for the
    caller). Any error the provider answered (a Timeout or PeerGone of its own work too), and
    a malformed or ``isError`` reply, are tool failures: an ``isError`` result.
    """
    try:
        if error is None:
            output = provider_output(tool, reply)
        elif isinstance(error, Timeout) and not error.remote:
            raise Timeout(
                f"{tool.provider.name} did not answer {tool.nsid} within "
                f"{call_timeout:g}s; the call was cancelled"
            ) from None
        elif isinstance(error, PeerGone) and not error.remote:
            raise PeerGone(
                f"{tool.provider.name}, which provides {tool.nsid}, disconnected during the call"
            ) from None
        elif isinstance(error, KikiError):
            raise ToolFailure(error.message, error.jsonrpc_code, error.data) from error
        else:
            raise error
    except ToolFailure as failure:
        return failed_result(failure, modern)
    return checked_result(schema, output, modern, room)


def own_result(
    schema: ToolSchema,
    modern: dict[str, Any] | None,
    room: int,
    output: Any,
    error: BaseException | None,
) -> Settled:
    """The MCP result of one of the broker's own tools: what it could not find is a tool
    error, as a provider's would be; anything else it raised is the call's error."""
    if error is None:
        return checked_result(schema, output, modern, room)
    if isinstance(error, (InvalidParams, NotFound)):
        return failed_result(ToolFailure(error.message, error.jsonrpc_code, error.data), modern)
    raise error


def failed_result(failure: ToolFailure, modern: dict[str, Any] | None) -> Settled:
    return mcp.tool_error_result(failure.message, failure.data, modern), "error", failure.code


def checked_result(
    schema: ToolSchema, output: Any, modern: dict[str, Any] | None, room: int
) -> Settled:
    """The MCP result for a tool's output, which must match its lexicon, and fit in an answer
    line (``room``: the line limit less the caller's id): the answer carries it twice (as
    structure and as JSON text, escaped once more), and one over the line limit would reach the
    caller as -32005 after an audit line saying ok."""
    try:
        schema.validate_output(output)
    except ValidationError as exc:
        message = f"the tool's output broke its lexicon: {exc}"
        return mcp.tool_error_result(message, exc.data, modern), "error", exc.jsonrpc_code
    if not schema.has_output:
        output = None  # nothing, or {}: the same no output
    text = orjson.dumps(output)
    if 3 * len(text) + ANSWER_SLACK > room and (
        2 * len(text) + text.count(b'"') + text.count(b"\\") + ANSWER_SLACK > room
    ):
        message = (
            f"the tool's output of {len(text)} bytes does not fit in an answer: with its text "
            "copy the answer would be over the line limit"
        )
        data = {"size": len(text), "room": room}
        return mcp.tool_error_result(message, data, modern), "error", LimitExceeded.jsonrpc_code
    return mcp.call_result(output, modern, text), "ok", None


def _text_of(result: dict[str, Any]) -> str:
    parts = result.get("content")
    if not isinstance(parts, list):
        return ""
    return "\n".join(
        p.get("text", "")
        for p in parts
        if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
    )
