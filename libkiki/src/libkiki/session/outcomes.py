"""What a remote client makes of what the session tells it: intents, results and close codes.

Pure functions, no I/O: an intent as the contract's ``#intent`` object, the output or typed
error a final ``#result`` stands for, the error a relay's close frame names, and plain JSON
values out of what pycrdt reads from the document.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from libkiki import errors
from libkiki.errors import (
    FrameTooLarge,
    InvalidFrame,
    InvalidParams,
    KikiError,
    LimitExceeded,
    PeerGone,
    PermissionDenied,
    ProtocolError,
    Timeout,
    ToolError,
)

FINAL: Final = frozenset({"ok", "error", "refused", "expired"})
INTENT_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_INPUT: Final = 512 << 10
MAX_DEPTH: Final = 128  # levels of nesting plain() follows

# The class a result's status stands for when its error names none Kiki knows.
_BY_STATUS: Final[dict[str, type[KikiError]]] = {
    "error": ToolError,
    "refused": PermissionDenied,
    "expired": Timeout,
}
# The class a close code stands for when its reason names none (RFC 6455 codes, as
# libkiki.errors' ws_close_code gives them, and 1006: the connection dropped without a close).
_BY_CLOSE: Final[dict[int, type[KikiError]]] = {
    1000: PeerGone,
    1001: PeerGone,
    1002: ProtocolError,
    1006: PeerGone,
    1007: InvalidFrame,
    1008: PermissionDenied,
    1009: FrameTooLarge,
    1011: KikiError,
    1013: LimitExceeded,
}
_MAX_SAFE = 2**53  # integers a double holds exactly: Yjs numbers are doubles


def error_class(name: str) -> type[KikiError] | None:
    """The class of Kiki's one error tree called ``name`` (``PermissionDenied``), if any."""
    if name not in errors.__all__:
        return None
    cls = getattr(errors, name)
    return cls if isinstance(cls, type) and issubclass(cls, KikiError) else None


def remote_error(cls: type[KikiError], message: str) -> KikiError:
    """An error of ``cls`` told by a peer. Built around the class's own ``__init__``, since some
    (FrameTooLarge, ValidationError) take structured arguments a peer's text does not carry."""
    error = cls.__new__(cls)
    KikiError.__init__(error, message)
    error.remote = True
    return error


def error_for_close(code: int | None, reason: str) -> KikiError:
    """The error a relay's close frame tells: its reason is ``<ErrorClass>: <message>``."""
    name, sep, message = reason.partition(": ")
    cls = error_class(name) if sep else None
    if cls is not None:
        return remote_error(cls, message)
    fallback = _BY_CLOSE.get(code or 1006, KikiError)
    if reason:
        text = reason
    elif code in (None, 1006):
        text = "the connection to the session was lost"
    else:
        text = f"the session closed the connection (code {code})"
    return remote_error(fallback, text)


def new_intent(
    intent_id: str,
    tool: str,
    input: Any,
    *,
    by: str,
    now: datetime,
    deadline: datetime | None = None,
    max_input: int = MAX_INPUT,
) -> dict[str, Any]:
    """The contract's ``#intent`` object; refuses what no device could carry out, and an input
    over ``max_input`` bytes of JSON, which the relay would answer by closing the connection
    (its ``max_message``, 1 MiB by default, bounds one update)."""
    if not INTENT_ID.fullmatch(intent_id):
        raise InvalidParams(f"an intent id is 1-64 of [A-Za-z0-9_-], not {intent_id!r}")
    if not isinstance(tool, str) or not 0 < len(tool) <= 317:
        raise InvalidParams("a tool is named by its NSID")
    try:
        encoded = orjson.dumps(input)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise InvalidParams(f"the input is not JSON: {exc}") from None
    if len(encoded) > max_input:
        raise FrameTooLarge(len(encoded), max_input)
    input = orjson.loads(encoded)
    intent: dict[str, Any] = {
        "id": intent_id,
        "tool": tool,
        "input": input,
        "by": by,
        "createdAt": timestamp(now),
    }
    if deadline is not None:
        intent["deadline"] = timestamp(deadline)
    return intent


def timestamp(when: datetime) -> str:
    """A lexicon ``datetime``: RFC 3339 in UTC, to the millisecond."""
    if when.tzinfo is None:
        raise InvalidParams("a time needs its time zone")
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def is_final(result: Any) -> bool:
    return isinstance(result, dict) and result.get("status") in FINAL


def outcome(result: dict[str, Any]) -> Any:
    """The output of a final result whose status is ``ok``; else raises the error it names."""
    status = result.get("status")
    if status == "ok":
        return plain(result.get("output"))
    fallback = _BY_STATUS.get(str(status), KikiError)
    error = result.get("error")
    name = message = ""
    if isinstance(error, dict):
        name, message = str(error.get("name", "")), str(error.get("message", ""))
    cls = error_class(name)
    if cls is None:
        cls = fallback
        said = f"{name}: {message}" if name else message
        message = said or f"the intent was {status}"
    raise remote_error(cls, message or f"the intent was {status}")


def plain(value: Any, *, _depth: int = 0) -> Any:
    """``value`` as JSON would carry it: Yjs numbers are doubles, so pycrdt reads every number
    as a float; whole ones a double holds exactly come back as ints. A value nested deeper than
    :data:`MAX_DEPTH` is :class:`LimitExceeded` (no lexicon types one; Python's stack would
    give out first)."""
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) <= _MAX_SAFE:
            return int(value)
        return value
    if isinstance(value, dict | list | tuple) and _depth >= MAX_DEPTH:
        raise LimitExceeded(f"a value of the session nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        return {str(k): plain(v, _depth=_depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v, _depth=_depth + 1) for v in value]
    return value
