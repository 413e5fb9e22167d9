"""Reading the fields of a Lexicon document's JSON nodes, recording every problem found."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from libkiki.errors import LexiconError
from libkiki.lexicon import formats
from libkiki.lexicon.model import canonical_ref

DEF_NAME: Final = re.compile(r"[a-zA-Z][a-zA-Z0-9_]{0,127}")

Path = tuple[str, ...]


def join(path: Path) -> str:
    return ".".join(path).replace(".[", "[")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Reader:
    """Typed access to a node's fields, recording a problem for each one that is wrong."""

    def __init__(self, document: str) -> None:
        self.document = document
        self.nsid = ""
        self.errors: list[LexiconError] = []

    def fail(self, path: Path, rule: str) -> None:
        self.errors.append(LexiconError(self.document, join(path), rule))

    # -- scalar accessors ------------------------------------------------------------------

    def _get(
        self, node: Mapping[str, Any], key: str, path: Path, ok: Callable[[Any], bool], what: str
    ) -> Any:
        if key not in node:
            return None
        value = node[key]
        if not ok(value):
            self.fail((*path, key), f"must be {what}")
            return None
        return value

    def string(self, node: Mapping[str, Any], key: str, path: Path) -> str | None:
        value: str | None = self._get(node, key, path, lambda v: isinstance(v, str), "a string")
        return value

    def integer(self, node: Mapping[str, Any], key: str, path: Path) -> int | None:
        value: int | None = self._get(node, key, path, is_int, "an integer")
        return value

    def size(self, node: Mapping[str, Any], key: str, path: Path) -> int | None:
        ok = lambda v: is_int(v) and v >= 0  # noqa: E731
        value: int | None = self._get(node, key, path, ok, "a non-negative integer")
        return value

    def boolean(self, node: Mapping[str, Any], key: str, path: Path) -> bool | None:
        value: bool | None = self._get(node, key, path, lambda v: isinstance(v, bool), "a boolean")
        return value

    def items(
        self, node: Mapping[str, Any], key: str, path: Path, ok: Callable[[Any], bool], what: str
    ) -> tuple[Any, ...] | None:
        def fine(v: Any) -> bool:
            return isinstance(v, list) and all(ok(x) for x in v)

        value = self._get(node, key, path, fine, f"an array of {what}")
        return None if value is None else tuple(value)

    def strings(self, node: Mapping[str, Any], key: str, path: Path) -> tuple[str, ...] | None:
        return self.items(node, key, path, lambda v: isinstance(v, str), "strings")

    def bounds(self, path: Path, low: int | None, high: int | None, names: str) -> None:
        if low is not None and high is not None and low > high:
            lo, hi = names.split("/")
            self.fail((*path, lo), f"must not be greater than {hi} ({low} > {high})")

    def ref(self, value: Any, path: Path) -> str | None:
        if not isinstance(value, str):
            self.fail(path, "must be a string")
            return None
        nsid, hash_, name = value.partition("#")
        nsid = nsid or self.nsid
        if hash_ and not DEF_NAME.fullmatch(name):
            self.fail(path, f"{value!r} is not a valid reference (bad definition name)")
            return None
        if not formats.is_nsid(nsid):
            self.fail(path, f"{value!r} is not a valid reference (bad NSID)")
            return None
        return canonical_ref(nsid, name or "main")
