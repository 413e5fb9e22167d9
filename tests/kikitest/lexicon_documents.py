"""Hypothesis strategies for whole Lexicon documents, valid or nearly so, and for files that
are not lexicons at all (for the commands that read them).

The documents use every type and constraint of the language, in combinations no hand-written
test has, and refer to their own definitions (in cycles too). Many do not lint (a required
property that is not declared, minimum over maximum, a reference to nothing): the properties
that need a valid document filter by the linter, which is what decides validity.
"""

from __future__ import annotations

import string
from typing import Any

import orjson
from hypothesis import strategies as st

from libkiki.lexicon import formats

NSID = "com.example.gen.doc"
NAMES = st.from_regex(r"[a-z][a-zA-Z0-9]{0,6}", fullmatch=True).filter(lambda n: n != "main")
PROPS = st.sampled_from(["a", "b", "text", "type", "$type", "list", "class", "model_config", "x1"])
SMALL = st.integers(0, 6)
Draw = st.DrawFn


def _maybe(draw: Draw, node: dict[str, Any], key: str, strategy: st.SearchStrategy[Any]) -> None:
    if draw(st.booleans()):
        node[key] = draw(strategy)


@st.composite
def field(draw: Draw, refs: tuple[str, ...], depth: int = 0) -> dict[str, Any]:
    """A field's schema: any type the language allows there."""
    kinds = ["null", "boolean", "integer", "string", "bytes", "cid-link", "blob", "unknown"]
    if refs:
        kinds += ["ref", "union"]
    else:
        kinds.append("union")
    if depth < 3:
        kinds += ["array", "object", "object"]
    kind = draw(st.sampled_from(kinds))
    node: dict[str, Any] = {"type": kind}
    _maybe(draw, node, "description", st.text(max_size=8))
    if kind == "boolean":
        _maybe(draw, node, "default", st.booleans())
        _maybe(draw, node, "const", st.booleans())
    elif kind == "integer":
        _maybe(draw, node, "minimum", st.integers(-5, 5))
        _maybe(draw, node, "maximum", st.integers(-5, 50))
        _maybe(draw, node, "enum", st.lists(st.integers(-5, 5), min_size=1, max_size=3))
        _maybe(draw, node, "default", st.integers(-5, 5))
        _maybe(draw, node, "const", st.integers(-5, 5))
    elif kind == "string":
        _maybe(draw, node, "format", st.sampled_from(sorted(formats.FORMATS)))
        for key in ("minLength", "maxLength", "minGraphemes", "maxGraphemes"):
            _maybe(draw, node, key, st.integers(0, 40))
        words = st.text(string.ascii_lowercase, max_size=4)
        _maybe(draw, node, "knownValues", st.lists(words, max_size=3))
        _maybe(draw, node, "enum", st.lists(words, min_size=1, max_size=3))
        _maybe(draw, node, "default", words)
        _maybe(draw, node, "const", words)
    elif kind == "bytes":
        _maybe(draw, node, "minLength", SMALL)
        _maybe(draw, node, "maxLength", SMALL)
    elif kind == "blob":
        mime = st.sampled_from(["image/*", "text/plain", "*/*", "video/mp4"])
        _maybe(draw, node, "accept", st.lists(mime, max_size=2))
        _maybe(draw, node, "maxSize", st.integers(0, 10_000))
    elif kind == "ref":
        node["ref"] = draw(st.sampled_from(refs))
    elif kind == "union":
        node["refs"] = draw(st.lists(st.sampled_from(refs), max_size=3)) if refs else []
        _maybe(draw, node, "closed", st.booleans())
    elif kind == "array":
        node["items"] = draw(field(refs, depth + 1))
        _maybe(draw, node, "minLength", SMALL)
        _maybe(draw, node, "maxLength", SMALL)
    elif kind == "object":
        node.update(draw(object_body(refs, depth + 1)))
    return node


@st.composite
def object_body(draw: Draw, refs: tuple[str, ...], depth: int) -> dict[str, Any]:
    props = draw(st.dictionaries(PROPS, field(refs, depth), max_size=3))
    body: dict[str, Any] = {"type": "object", "properties": props}
    names = [*sorted(props), "undeclared"]
    _maybe(draw, body, "required", st.lists(st.sampled_from(names), max_size=2, unique=True))
    _maybe(draw, body, "nullable", st.lists(st.sampled_from(names), max_size=2, unique=True))
    return body


@st.composite
def params(draw: Draw) -> dict[str, Any]:
    scalar = st.sampled_from(
        [
            {"type": "boolean"},
            {"type": "integer", "minimum": 0},
            {"type": "string"},
            {"type": "unknown"},
            {"type": "string", "format": "did"},
        ]
    )
    item = st.one_of(scalar, scalar.map(lambda s: {"type": "array", "items": s}))
    props = draw(st.dictionaries(PROPS, item, max_size=3))
    node: dict[str, Any] = {"type": "params", "properties": props}
    if props:
        _maybe(draw, node, "required", st.lists(st.sampled_from(sorted(props)), unique=True))
    return node


@st.composite
def body(draw: Draw, refs: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {"encoding": "application/json"}
    schema = st.one_of(
        object_body(refs, 1),
        field(refs, 2).filter(lambda n: n["type"] in {"ref", "union", "object"}),
    )
    _maybe(draw, out, "schema", schema)
    return out


@st.composite
def primary(draw: Draw, refs: tuple[str, ...]) -> dict[str, Any]:
    kind = draw(st.sampled_from(["record", "query", "procedure", "subscription"]))
    if kind == "record":
        key = st.sampled_from(["tid", "nsid", "any", "literal:self"])
        return {"type": "record", "key": draw(key), "record": draw(object_body(refs, 1))}
    node: dict[str, Any] = {"type": kind}
    _maybe(draw, node, "parameters", params())
    if kind == "procedure":
        _maybe(draw, node, "input", body(refs))
    if kind in {"query", "procedure"}:
        _maybe(draw, node, "output", body(refs))
    if kind == "subscription":
        message = field(refs, 2).filter(lambda n: n["type"] == "union").map(lambda u: {"schema": u})
        _maybe(draw, node, "message", message)
    return node


@st.composite
def named(draw: Draw, refs: tuple[str, ...]) -> dict[str, Any]:
    """A named (non-main) definition: a token, an object, or any other named type."""
    choice = draw(st.sampled_from(["token", "object", "object", "field"]))
    if choice == "token":
        return {"type": "token", "description": "a token"}
    if choice == "object":
        return draw(object_body(refs, 1))
    return draw(field(refs, 1).filter(lambda n: n["type"] not in {"ref", "union", "unknown"}))


@st.composite
def documents(draw: Draw) -> dict[str, Any]:
    names = draw(st.lists(NAMES, max_size=4, unique=True))
    has_main = draw(st.booleans()) or not names
    targets = [*names, *(["main"] if has_main else [])]
    refs = tuple(
        draw(st.sampled_from([f"#{n}", f"{NSID}#{n}"])) if n != "main" else NSID for n in targets
    ) + tuple(draw(st.lists(st.just("#nowhere"), max_size=1)))
    defs = {name: draw(named(refs)) for name in names}
    if has_main:
        defs["main"] = draw(st.one_of(primary(refs), named(refs)))
    return {"lexicon": 1, "id": NSID, "defs": defs}


# -- files that a command may be given ------------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)  # what JSON (orjson) carries
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=20,
)


@st.composite
def mutated(draw: Draw) -> bytes:
    """A document with one node replaced by arbitrary JSON, or one key dropped."""
    doc = draw(documents())
    node: Any = doc
    path: list[Any] = []
    while isinstance(node, dict | list) and node and draw(st.integers(0, 3)):
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        path.append(key)
        node = node[key]
    parent: Any = doc
    for key in path[:-1]:
        parent = parent[key]
    if path and isinstance(parent, dict) and draw(st.booleans()):
        del parent[path[-1]]
    elif path:
        parent[path[-1]] = draw(JSON)
    return orjson.dumps(doc)


@st.composite
def deep(draw: Draw) -> bytes:
    """A document, or plain JSON, nested hundreds deep."""
    levels = draw(st.integers(50, 1100))
    shape = draw(st.sampled_from(["array", "object", "json", "chain"]))
    if shape == "json":
        return b"[" * levels + b"]" * levels
    if shape == "chain":  # each definition shallow, the references between them long
        kind = draw(st.sampled_from(["array", "object"]))
        defs = {
            f"d{i}": {"type": "array", "items": {"type": "ref", "ref": f"#d{i + 1}"}}
            if kind == "array"
            else {"type": "object", "properties": {"a": {"type": "ref", "ref": f"#d{i + 1}"}}}
            for i in range(levels)
        }
        defs[f"d{levels}"] = {"type": "string"}
        defs["main"] = {"type": "object", "properties": {"a": {"type": "ref", "ref": "#d0"}}}
        return orjson.dumps({"lexicon": 1, "id": NSID, "defs": defs})
    node = '{"type":"string"}'
    for _ in range(levels):
        node = (
            f'{{"type":"array","items":{node}}}'
            if shape == "array"
            else f'{{"type":"object","properties":{{"a":{node}}}}}'
        )
    return f'{{"lexicon":1,"id":"{NSID}","defs":{{"main":{node}}}}}'.encode()


INPUT_FILES = st.one_of(
    st.binary(max_size=200),
    JSON.map(orjson.dumps),
    documents().map(orjson.dumps),
    mutated(),
    deep(),
    st.text(max_size=100).map(str.encode),
)
