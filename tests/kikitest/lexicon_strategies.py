"""Hypothesis strategies: data valid for a Lexicon schema node, and invalid variants of it."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from libkiki.lexicon import Registry
from libkiki.lexicon.model import (
    ArrayType,
    BlobType,
    BooleanType,
    BytesType,
    CidLinkType,
    Def,
    IntegerType,
    ObjectType,
    RecordType,
    RefType,
    StringType,
    TokenType,
    UnionType,
    UnknownType,
)

CID = "bafyreiclp443lavogvhj3d2ob2cxbfuscni2k5jk7bebjzg7khl3esabwq"
FORMAT_EXAMPLES = {
    "at-identifier": ["did:plc:asdf123", "alice.example.com"],
    "at-uri": ["at://did:plc:asdf123/com.example.post/3jzfcijpj2z2a"],
    "cid": [CID],
    "datetime": ["1985-04-12T23:20:50.123Z", "2024-02-29T00:00:00+01:00"],
    "did": ["did:web:example.com", "did:plc:7iza6de2dwap2sbkpav7c6c6"],
    "handle": ["john.test", "xn--ls8h.test"],
    "language": ["en", "pt-BR"],
    "nsid": ["com.example.fooBar", "dev.kiki.media.seek"],
    "record-key": ["self", "3jzfcijpj2z2a"],
    "tid": ["3jzfcijpj2z2a"],
    "uri": ["https://example.com/a?b=c", "file:///home/user/a.ogg"],
}
# Plain ASCII: one byte, one code point and one grapheme per character, so every length bound
# means the same thing and the generator can honour them all at once.
ALPHABET = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


def _string(node: StringType) -> st.SearchStrategy[str]:
    if node.const is not None:
        return st.just(node.const)
    if node.enum is not None:
        return st.sampled_from(node.enum)
    if node.format is not None:
        return st.sampled_from(FORMAT_EXAMPLES[node.format])
    low = max(node.min_length or 0, node.min_graphemes or 0)
    highs = [h for h in (node.max_length, node.max_graphemes) if h is not None]
    high = max(low, min([*highs, 40]))
    return st.text(ALPHABET, min_size=low, max_size=high)


def _tagger(ref: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda value: {**value, "$type": ref}


def valid_data(registry: Registry, node: Def, depth: int = 0) -> st.SearchStrategy[Any]:
    if depth > 12 and isinstance(node, RefType | UnionType):
        return st.nothing()  # a definition that must contain itself: no finite value
    if isinstance(node, StringType):
        return _string(node)
    if isinstance(node, IntegerType):
        if node.const is not None:
            return st.just(node.const)
        if node.enum is not None:
            return st.sampled_from(node.enum)
        return st.integers(node.minimum, node.maximum)
    if isinstance(node, BooleanType):
        return st.just(node.const) if node.const is not None else st.booleans()
    if isinstance(node, ArrayType):
        low = node.min_length or 0
        high = max(low, min(node.max_length if node.max_length is not None else 3, 3))
        return st.lists(valid_data(registry, node.items, depth + 1), min_size=low, max_size=high)
    if isinstance(node, RecordType):
        return valid_data(registry, node.record, depth)
    if isinstance(node, ObjectType):
        required = {n: valid_data(registry, node.properties[n], depth + 1) for n in node.required}
        optional = {
            n: valid_data(registry, p, depth + 1)
            for n, p in node.properties.items()
            if n not in node.required and depth < 4
        }
        return st.fixed_dictionaries(required, optional=optional)
    if isinstance(node, RefType):
        canonical, target = registry.resolve(node.ref)
        if isinstance(target, TokenType):
            return st.just(canonical)
        return valid_data(registry, target, depth + 1)
    if isinstance(node, UnionType):
        options = []
        for ref in node.refs:
            _, target = registry.resolve(ref)
            member = valid_data(registry, target, depth + 1)
            options.append(member.map(_tagger(ref)))
        if not node.closed:  # an open union takes any object with a $type
            options.append(st.just({"$type": "com.example.elsewhere#thing", "x": [1]}))
        return st.one_of(options)
    if isinstance(node, UnknownType):
        return st.just({"anything": [1, "two"]})
    if isinstance(node, BytesType):
        size = node.min_length or 1
        return st.just({"$bytes": base64.b64encode(b"x" * size).decode()})
    if isinstance(node, CidLinkType):
        return st.just({"$link": CID})
    if isinstance(node, BlobType):
        mime = "image/png" if node.accept else "text/plain"
        return st.just({"$type": "blob", "ref": {"$link": CID}, "mimeType": mime, "size": 1})
    return st.none()


def _wrong_type(registry: Registry, node: Def) -> Any:
    if isinstance(node, RefType):
        _, target = registry.resolve(node.ref)
        return 12345 if isinstance(target, TokenType) else _wrong_type(registry, target)
    if isinstance(node, StringType):
        return 12345
    if isinstance(node, IntegerType):
        return "12345"
    if isinstance(node, BooleanType):
        return "yes"
    if isinstance(node, ArrayType):
        return {"not": "an array"}
    return "not an object"


def _broken_constraints(node: Def) -> list[Any]:
    broken: list[Any] = []
    if isinstance(node, StringType) and node.enum is None and node.const is None:
        limits = [m for m in (node.max_length, node.max_graphemes) if m is not None]
        if limits:
            broken.append("x" * (min(limits) + 1))
    if isinstance(node, IntegerType) and node.enum is None and node.const is None:
        if node.maximum is not None:
            broken.append(node.maximum + 1)
        if node.minimum is not None:
            broken.append(node.minimum - 1)
    return broken


def invalid_variants(registry: Registry, node: Def, value: Any) -> list[Any]:
    """Single mutations of a valid ``value`` that the schema must reject."""
    if isinstance(node, RefType):
        _, target = registry.resolve(node.ref)
        return [] if isinstance(target, TokenType) else invalid_variants(registry, target, value)
    if isinstance(node, RecordType):
        node = node.record
    if not isinstance(node, ObjectType) or not isinstance(value, dict):
        return []
    variants: list[Any] = [[1, 2, 3]]
    for name in node.required:
        variants.append({k: v for k, v in value.items() if k != name})
    for name, prop in node.properties.items():
        if name not in value:
            continue
        variants.append({**value, name: _wrong_type(registry, prop)})
        variants.extend({**value, name: bad} for bad in _broken_constraints(prop))
        variants.extend(
            {**value, name: inner} for inner in invalid_variants(registry, prop, value[name])
        )
    return variants
