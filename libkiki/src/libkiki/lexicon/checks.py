"""Checks of single Lexicon values, each built once for one schema node's constraints.

A check takes a value and returns nothing, or raises :class:`Invalid` with the rule broken; the
path to the value is added by the containers on the way out (see :mod:`.validator`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final

from libkiki.lexicon import formats
from libkiki.lexicon.model import (
    BlobType,
    BooleanType,
    BytesType,
    IntegerType,
    StringType,
)

Check = Callable[[Any], None]


_B64: Final = re.compile(r"[A-Za-z0-9+/]*={0,2}")


class Invalid(Exception):
    __slots__ = ("parts", "rule")

    def __init__(self, rule: str, *parts: str) -> None:
        self.rule = rule
        self.parts = list(parts)  # innermost first


def type_check(kind: type, what: str) -> Check:
    rule = f"must be {what}"

    def check(v: Any) -> None:
        if v.__class__ is not kind and (not isinstance(v, kind) or isinstance(v, bool)):
            raise Invalid(rule)

    return check


def string_check(t: StringType) -> Check:
    min_len, max_len = t.min_length, t.max_length
    min_gr, max_gr = t.min_graphemes, t.max_graphemes
    choices = frozenset(t.enum) if t.enum is not None else None
    const, fmt = t.const, t.format
    fmt_check = formats.FORMATS[fmt] if fmt else None

    def check(v: Any) -> None:
        if v.__class__ is not str and not isinstance(v, str):
            raise Invalid("must be a string")
        n = len(v)
        # UTF-8 takes 1 to 4 bytes per code point: only encode when the bound is in doubt.
        if (
            max_len is not None
            and n * 4 > max_len
            and (n > max_len or formats.utf8_length(v) > max_len)
        ):
            raise Invalid(f"must be at most {max_len} bytes")
        if min_len is not None and n < min_len and formats.utf8_length(v) < min_len:
            raise Invalid(f"must be at least {min_len} bytes")
        # A grapheme spans one or more code points: count only when the bound is in doubt.
        if max_gr is not None and n > max_gr and formats.grapheme_count(v) > max_gr:
            raise Invalid(f"must be at most {max_gr} graphemes")
        if min_gr is not None and (n < min_gr or formats.grapheme_count(v) < min_gr):
            raise Invalid(f"must be at least {min_gr} graphemes")
        if choices is not None and v not in choices:
            raise Invalid(f"must be one of {', '.join(sorted(choices))}")
        if const is not None and v != const:
            raise Invalid(f"must be {const!r}")
        if fmt_check is not None and not fmt_check(v):
            raise Invalid(f"must be a valid {fmt}")

    only_upper = min_len is None and min_gr is None and choices is None and const is None
    if not only_upper or fmt_check is not None:
        return check
    if max_len is None and max_gr is None:
        return type_check(str, "a string")
    # Most strings are far below their bounds: decide from the code point count alone.
    bounds = [b for b in (None if max_len is None else max_len // 4, max_gr) if b is not None]
    safe = min(bounds)

    def bounded(v: Any) -> None:
        if v.__class__ is not str or len(v) > safe:
            check(v)

    return bounded


def integer_check(t: IntegerType) -> Check:
    low, high, const = t.minimum, t.maximum, t.const
    choices = frozenset(t.enum) if t.enum is not None else None
    if low is None and high is None and choices is None and const is None:
        return type_check(int, "an integer")

    def check(v: Any) -> None:
        if v.__class__ is not int and (not isinstance(v, int) or isinstance(v, bool)):
            raise Invalid("must be an integer")
        if low is not None and v < low:
            raise Invalid(f"must be at least {low}")
        if high is not None and v > high:
            raise Invalid(f"must be at most {high}")
        if choices is not None and v not in choices:
            raise Invalid(f"must be one of {', '.join(map(str, sorted(choices)))}")
        if const is not None and v != const:
            raise Invalid(f"must be {const}")

    return check


def boolean_check(t: BooleanType) -> Check:
    const = t.const

    def check(v: Any) -> None:
        if v is not True and v is not False:
            raise Invalid("must be a boolean")
        if const is not None and v is not const:
            raise Invalid(f"must be {'true' if const else 'false'}")

    return check


def null_check(v: Any) -> None:
    if v is not None:
        raise Invalid("must be null")


def bytes_length(v: Any) -> int:
    if isinstance(v, bytes | bytearray | memoryview):
        return len(v)
    if not isinstance(v, dict) or len(v) != 1 or not isinstance(v.get("$bytes"), str):
        raise Invalid('must be bytes ({"$bytes": base64})')
    text: str = v["$bytes"]
    if not _B64.fullmatch(text):
        raise Invalid("must be valid base64")
    data = text.rstrip("=")
    if len(data) % 4 == 1:
        raise Invalid("must be valid base64")
    return len(data) * 3 // 4


def bytes_check(t: BytesType) -> Check:
    low, high = t.min_length, t.max_length

    def check(v: Any) -> None:
        size = bytes_length(v)
        if low is not None and size < low:
            raise Invalid(f"must be at least {low} bytes")
        if high is not None and size > high:
            raise Invalid(f"must be at most {high} bytes")

    return check


def cid_link_check(v: Any) -> None:
    if not isinstance(v, dict) or len(v) != 1 or not isinstance(v.get("$link"), str):
        raise Invalid('must be a CID link ({"$link": cid})')
    if not formats.is_cid(v["$link"]):
        raise Invalid("must link a valid CID", "$link")


def mime_matches(mime: str, patterns: tuple[str, ...]) -> bool:
    for pattern in patterns:
        if pattern in ("*/*", mime):
            return True
        if pattern.endswith("/*") and mime.startswith(pattern[:-1]):
            return True
    return False


def blob_check(t: BlobType) -> Check:
    accept, max_size = t.accept, t.max_size

    def check(v: Any) -> None:
        if not isinstance(v, dict) or v.get("$type") != "blob":
            raise Invalid('must be a blob ({"$type": "blob", ...})')
        try:
            cid_link_check(v.get("ref"))
        except Invalid as exc:
            exc.parts.append("ref")
            raise
        mime, size = v.get("mimeType"), v.get("size")
        if not isinstance(mime, str) or "/" not in mime:
            raise Invalid("must be a MIME type", "mimeType")
        if size.__class__ is not int or size < 0:
            raise Invalid("must be a non-negative integer", "size")
        if max_size is not None and size > max_size:
            raise Invalid(f"must be at most {max_size} bytes", "size")
        if accept is not None and not mime_matches(mime, accept):
            raise Invalid(f"must be one of {', '.join(accept)}", "mimeType")

    return check


def unknown_check(v: Any) -> None:
    if not isinstance(v, dict):
        raise Invalid("must be an object")
    if "$bytes" in v or "$link" in v or v.get("$type") == "blob":
        raise Invalid("must be a plain object, not bytes, a CID link or a blob")


def token_check(ref: str) -> Check:
    def check(v: Any) -> None:
        if v != ref:
            raise Invalid(f"must be {ref!r}")

    return check
