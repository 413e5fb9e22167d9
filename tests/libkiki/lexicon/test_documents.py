"""Loading documents and resolving references: interop vectors, atproto lexicons, errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kikitest.lexicon_testdata import data_path
from libkiki.errors import LexiconError, ValidationError
from libkiki.lexicon import Registry, lint_document, parse_document
from libkiki.lexicon.validator import MAX_DEPTH

pytestmark = pytest.mark.unit


def cases(name: str) -> list[dict[str, Any]]:
    loaded: list[dict[str, Any]] = json.loads(
        data_path("atproto-interop", "lexicon", name).read_text()
    )
    assert loaded
    return loaded


@pytest.mark.parametrize("case", cases("lexicon-valid.json"), ids=lambda c: c["name"])
def test_valid_documents_are_accepted(case: dict[str, Any]) -> None:
    doc, errors = lint_document(case["lexicon"])
    assert errors == []
    assert doc is not None
    assert doc.id == case["lexicon"]["id"]


@pytest.mark.parametrize("case", cases("lexicon-invalid.json"), ids=lambda c: c["name"])
def test_invalid_documents_are_rejected(case: dict[str, Any]) -> None:
    with pytest.raises(LexiconError):
        parse_document(case["lexicon"])


def test_every_atproto_lexicon_loads_and_resolves(atproto: Registry) -> None:
    assert len(atproto) > 250
    assert atproto.check() == []
    for doc in atproto.documents():
        for name in doc.defs:
            ref = doc.id if name == "main" else f"{doc.id}#{name}"
            canonical, definition = atproto.resolve(ref)
            assert canonical == ref
            assert definition is doc.defs[name]


def test_cross_document_and_local_refs_resolve(atproto: Registry) -> None:
    ref, _ = atproto.resolve("#postView", context="app.bsky.feed.defs")
    assert ref == "app.bsky.feed.defs#postView"
    assert atproto.resolve("app.bsky.feed.post#main")[0] == "app.bsky.feed.post"


def doc(defs: dict[str, Any], nsid: str = "com.example.test") -> dict[str, Any]:
    return {"lexicon": 1, "id": nsid, "defs": defs}


def test_error_names_document_path_and_rule() -> None:
    raw = doc(
        {"main": {"type": "object", "properties": {"n": {"type": "integer", "minimum": "1"}}}}
    )
    with pytest.raises(LexiconError) as info:
        parse_document(raw)
    error = info.value
    assert (error.document, error.path) == ("com.example.test", "defs.main.properties.n.minimum")
    assert error.rule == "must be an integer"
    assert str(error) == "com.example.test:defs.main.properties.n.minimum: must be an integer"


@pytest.mark.parametrize(
    ("node", "path", "rule"),
    [
        ({"type": "string", "maxLength": 2, "minLength": 3}, "minLength", "must not be greater"),
        ({"type": "string", "format": "email"}, "format", "not a Lexicon string format"),
        ({"type": "integer", "default": 9, "maximum": 5}, "default", "between minimum"),
        ({"type": "object", "required": ["x"], "properties": {}}, "required[0]", "not a defined"),
        ({"type": "array"}, "items", "is required"),
        ({"type": "union", "refs": [], "closed": True}, "refs", "at least one"),
        ({"type": "float"}, "type", "not a Lexicon type"),
    ],
)
def test_malformed_constraints_are_reported(node: dict[str, Any], path: str, rule: str) -> None:
    _, errors = lint_document(doc({"main": {"type": "object", "properties": {"f": node}}}))
    assert errors, node
    assert errors[0].path == f"defs.main.properties.f.{path}"
    assert rule in errors[0].rule


def test_lint_reports_every_problem() -> None:
    raw = doc({"a": {"type": "integer", "minimum": "x"}, "b": {"type": "string", "maxLength": -1}})
    _, errors = lint_document(raw)
    assert [e.path for e in errors] == ["defs.a.minimum", "defs.b.maxLength"]


def test_unresolved_refs_are_reported() -> None:
    registry = Registry()
    raw = doc({"main": {"type": "object", "properties": {"a": {"type": "ref", "ref": "#nope"}}}})
    assert registry.add_json(raw) == []
    (error,) = registry.check()
    assert error.path == "defs.main.properties.a.ref"
    assert "com.example.test#nope does not resolve" in error.rule


def test_circular_required_refs_are_reported() -> None:
    registry = Registry()
    obj = {"type": "object", "required": ["next"], "properties": {"next": {"type": "ref"}}}
    a = json.loads(json.dumps(obj))
    a["properties"]["next"]["ref"] = "#b"
    b = json.loads(json.dumps(obj))
    b["properties"]["next"]["ref"] = "#a"
    registry.add_json(doc({"a": a, "b": b}))
    errors = registry.check()
    assert len(errors) == 1
    assert "circular required references" in errors[0].rule


def test_optional_recursion_is_fine_and_data_depth_is_bounded() -> None:
    registry = Registry()
    node = {"type": "object", "properties": {"child": {"type": "ref", "ref": "#node"}}}
    registry.add_json(doc({"node": node}))
    assert registry.check() == []
    validator = registry.validator("com.example.test#node")
    value: dict[str, Any] = {}
    for _ in range(MAX_DEPTH - 1):
        value = {"child": value}
    validator.validate(value)
    for _ in range(5000):  # far deeper than Python's recursion limit
        value = {"child": value}
    with pytest.raises(ValidationError, match="nests deeper"):
        validator.validate(value)


def test_taken_nsid_with_other_content_conflicts() -> None:
    from libkiki.errors import Conflict

    registry = Registry()
    registry.add(parse_document(doc({"a": {"type": "integer"}})))
    registry.add(parse_document(doc({"a": {"type": "integer"}})))  # same content: fine
    with pytest.raises(Conflict):
        registry.add(parse_document(doc({"a": {"type": "string"}})))
