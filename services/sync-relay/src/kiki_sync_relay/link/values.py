"""What the device link writes into a session's document, made JSON-safe (sans-I/O).

A Yjs document holds JSON: its numbers are JavaScript's (float64), and pycrdt stores a Python
int as a 64-bit integer, panicking (``pyo3_runtime.PanicException``, a ``BaseException``) on one
past it or on a map key that is not a string. The device's values come from other programs (an
MPRIS player's ``mpris:length`` is a D-Bus uint64, a tool's output any JSON), so each is made
safe before it is written:

- an int within ±2**53 (what every JSON reader keeps exactly) stays an int; one beyond becomes
  the nearest float, as a browser's ``JSON.parse`` reads it (a D-Bus "unknown" 2**64-1 is
  still a huge number, not a string a reader must know to parse) in the device's state, and is
  refused with ``exact`` (a tool's output: its caller would get another number than the tool
  answered, so the result says ``error`` instead);
- a float that is not finite (JSON has no NaN or Infinity) becomes null, and so does an int
  past the largest double (±2**1024: no float holds it, ``JSON.parse`` reads it as Infinity);
- a tuple is a list; an object whose keys are not all strings, a string with a lone surrogate,
  or any other type (bytes, a set...), is refused: :class:`~libkiki.errors.InvalidParams`, and
  the caller writes nothing of it (a state key keeps its last value; a tool's output becomes an
  ``error`` result).

Most values need none of that: orjson's round trip (strict integers, string keys) takes them
in C, a fifth of the time of walking them in Python (a 2000-node screen at 10/s), and the walk
is made only when it refuses one.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any, Final

import orjson

from libkiki.errors import InvalidParams

SAFE_INT: Final = 2**53
MAX_DEPTH: Final = 256  # arrays and objects nested in one value


def json_safe(value: Any, *, exact: bool = False) -> Any:
    """``value`` as the document can hold it (see the module); :class:`InvalidParams` if not."""
    try:
        return orjson.loads(orjson.dumps(value, option=orjson.OPT_STRICT_INTEGER))
    except orjson.JSONEncodeError:  # an int past 53 bits, a key not a string, bytes...
        return _walk(value, exact, 0)


def _walk(value: Any, exact: bool, depth: int) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:  # a lone surrogate: no UTF-8 (nor Yjs) string holds it
            raise InvalidParams("a string that is not Unicode text") from None
        return value
    if isinstance(value, int):
        if -SAFE_INT <= value <= SAFE_INT:
            return value
        if exact:
            raise InvalidParams(f"an integer past ±2**53 ({str(value)[:40]}) is not kept exactly")
        try:
            return float(value)
        except OverflowError:  # past the largest double: no float holds it, as for ±inf
            return None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth >= MAX_DEPTH:
        raise InvalidParams(f"a value nested more than {MAX_DEPTH} deep")
    if isinstance(value, dict):
        safe: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidParams(f"an object's key is a {type(key).__name__}, not a string")
            safe[key] = _walk(item, exact, depth + 1)
        return safe
    if isinstance(value, list | tuple):
        return [_walk(item, exact, depth + 1) for item in value]
    raise InvalidParams(f"a {type(value).__name__} is not a JSON value")


def is_fatal(exc: BaseException) -> bool:
    """Whether ``exc`` must go on up (the process stopping, a task cancelled), not be handled
    as the failure of a write or of the link: pycrdt's panic is a ``BaseException`` too."""
    stop = (KeyboardInterrupt, SystemExit, asyncio.CancelledError)
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(lambda e: isinstance(e, stop)) is not None
    return isinstance(exc, stop)
