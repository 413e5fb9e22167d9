"""The Lexicon evolution rules: each breaking change reported with its path."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from libkiki.lexicon import compare, compare_sets, parse_document

pytestmark = pytest.mark.unit

BASE: dict[str, Any] = {
    "lexicon": 1,
    "id": "com.example.music.enqueue",
    "defs": {
        "main": {
            "type": "procedure",
            "input": {
                "encoding": "application/json",
                "schema": {
                    "type": "object",
                    "required": ["track"],
                    "properties": {
                        "track": {"type": "ref", "ref": "#track"},
                        "source": {"type": "union", "refs": ["#track"], "closed": True},
                    },
                },
            },
        },
        "track": {
            "type": "object",
            "required": ["title"],
            "properties": {
                "title": {"type": "string", "maxGraphemes": 300},
                "rating": {"type": "integer", "minimum": 0, "maximum": 10},
                "kind": {"type": "string", "enum": ["song", "podcast"]},
            },
        },
    },
}
TRACK = "defs.track.properties"
INPUT = "defs.main.input.schema.properties"


def changed(edit: Any) -> list[tuple[str, str]]:
    new = copy.deepcopy(BASE)
    edit(new)
    return [(b.path, b.rule) for b in compare(parse_document(BASE), parse_document(new))]


def test_identical_is_compatible() -> None:
    assert changed(lambda d: None) == []


def test_compatible_evolution() -> None:
    def evolve(d: dict[str, Any]) -> None:
        props = d["defs"]["track"]["properties"]
        props["album"] = {"type": "string"}  # new optional field
        props["title"]["maxGraphemes"] = 500  # loosened
        props["kind"]["enum"].append("audiobook")  # more values
        d["defs"]["extra"] = {"type": "token"}  # new definition

    assert changed(evolve) == []


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda d: d["defs"]["track"]["properties"]["title"].update(maxGraphemes=256),
            (f"{TRACK}.title.maxGraphemes", "tightened from 300 to 256"),
        ),
        (
            lambda d: d["defs"]["track"]["properties"].pop("rating"),
            (f"{TRACK}.rating", "removed (or renamed)"),
        ),
        (
            lambda d: d["defs"]["track"]["properties"].update(rating={"type": "string"}),
            (f"{TRACK}.rating", "type changed from integer to string"),
        ),
        (
            lambda d: d["defs"]["track"]["required"].append("rating"),
            (f"{TRACK}.rating", "became required"),
        ),
        (
            lambda d: (
                d["defs"]["track"]["properties"].update(year={"type": "integer"}),
                d["defs"]["track"]["required"].append("year"),
            ),
            (f"{TRACK}.year", "a new field must be optional"),
        ),
        (
            lambda d: d["defs"]["track"]["properties"]["kind"]["enum"].remove("podcast"),
            (f"{TRACK}.kind.enum", "removed 'podcast'"),
        ),
        (
            lambda d: d["defs"]["track"]["properties"]["rating"].update(minimum=1),
            (f"{TRACK}.rating.minimum", "tightened from 0 to 1"),
        ),
        (
            lambda d: d["defs"]["main"]["input"]["schema"]["properties"]["source"].update(
                closed=False
            ),
            (f"{INPUT}.source.closed", "a closed union must stay closed"),
        ),
        (
            lambda d: (
                d["defs"].pop("track") and d["defs"].update(song=BASE["defs"]["track"]) and None
            ),
            ("defs.track", "removed (or renamed)"),
        ),
        (
            lambda d: d["defs"]["main"]["input"].update(encoding="text/plain"),
            ("defs.main.input.encoding", "changed from 'application/json' to 'text/plain'"),
        ),
    ],
)
def test_breaking_changes(edit: Any, expected: tuple[str, str]) -> None:
    assert expected in changed(edit)


def test_removed_document_breaks() -> None:
    doc = parse_document(BASE)
    (change,) = compare_sets({doc.id: doc}, {})
    assert str(change) == "com.example.music.enqueue: document removed"


# -- a required property becoming optional: breaks readers, not the server's own input --------

OPTIONAL = "became optional: readers rely on it being there"
OBJ: dict[str, Any] = {
    "type": "object",
    "required": ["id", "name"],
    "properties": {"id": {"type": "string"}, "name": {"type": "string"}},
}
JSON = "application/json"


def doc(nsid: str, **defs: Any) -> dict[str, Any]:
    return {"lexicon": 1, "id": nsid, "defs": copy.deepcopy(defs)}


def relaxed(old: dict[str, Any], *path: str) -> list[tuple[str, str]]:
    """Breaks from ``old`` to itself with ``name`` no longer required in the object at
    ``path`` (keys into the document's defs)."""
    new = copy.deepcopy(old)
    node = new["defs"]
    for key in path:
        node = node[key]
    node["required"].remove("name")
    return [(b.path, b.rule) for b in compare(parse_document(old), parse_document(new))]


def body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"encoding": JSON, "schema": schema}


@pytest.mark.parametrize(
    ("main", "where"),
    [
        ({"type": "query", "output": body(OBJ)}, ("main", "output", "schema")),
        ({"type": "procedure", "output": body(OBJ)}, ("main", "output", "schema")),
        ({"type": "subscription", "message": body(OBJ)}, ("main", "message", "schema")),
        ({"type": "record", "key": "tid", "record": OBJ}, ("main", "record")),
    ],
    ids=["query output", "procedure output", "subscription message", "record"],
)
def test_a_required_property_made_optional_breaks_what_readers_receive(
    main: dict[str, Any], where: tuple[str, ...]
) -> None:
    found = relaxed(doc("com.example.thing", main=main), *where)
    assert found == [(f"defs.{'.'.join(where)}.properties.name", OPTIONAL)]


def test_nested_in_an_output_too() -> None:
    outer = {"type": "object", "properties": {"inner": OBJ}}
    old = doc("com.example.thing", main={"type": "query", "output": body(outer)})
    found = relaxed(old, "main", "output", "schema", "properties", "inner")
    assert found == [("defs.main.output.schema.properties.inner.properties.name", OPTIONAL)]


def test_a_required_property_made_optional_in_inputs_and_parameters_is_compatible() -> None:
    params = {"type": "params", "required": ["id", "name"], "properties": OBJ["properties"]}
    old = doc("com.example.thing", main={"type": "procedure", "parameters": params})
    assert relaxed(old, "main", "parameters") == []
    old = doc("com.example.thing", main={"type": "procedure", "input": body(OBJ)})
    assert relaxed(old, "main", "input", "schema") == []
    # BASE's #track is reached from its input alone.
    base = copy.deepcopy(BASE)
    base["defs"]["track"]["required"] = ["title", "name"]
    base["defs"]["track"]["properties"]["name"] = {"type": "string"}
    assert relaxed(base, "track") == []


REF = {"type": "ref", "ref": "#item"}


@pytest.mark.parametrize(
    "main",
    [
        {"type": "query", "output": body(REF)},
        {"type": "procedure", "input": body(REF), "output": body(REF)},
        {"type": "procedure", "output": body({"type": "union", "refs": ["#item"]})},
        {
            "type": "query",
            "output": body(
                {"type": "object", "properties": {"items": {"type": "array", "items": REF}}}
            ),
        },
        {"type": "procedure", "input": body({"type": "object", "properties": {}})},
    ],
    ids=["output ref", "input and output", "output union", "output array", "not referred to"],
)
def test_a_named_definition_readers_may_receive(main: dict[str, Any]) -> None:
    old = doc("com.example.thing", main=main, item=OBJ)
    assert relaxed(old, "item") == [("defs.item.properties.name", OPTIONAL)]


def test_a_named_definition_reached_through_another_from_an_input_alone() -> None:
    wrapper = {"type": "object", "properties": {"item": REF}}
    old = doc(
        "com.example.thing",
        main={"type": "procedure", "input": body({"type": "ref", "ref": "#wrapper"})},
        wrapper=wrapper,
        item=OBJ,
    )
    assert relaxed(old, "item") == []


def test_compare_sets_follows_refs_between_documents() -> None:
    # com.example.a's #item is only in its own input, but c.d's output carries it.
    a = doc("com.example.a", main={"type": "procedure", "input": body(REF)}, item=OBJ)
    c = doc(
        "com.example.c",
        main={"type": "query", "output": body({"type": "ref", "ref": "com.example.a#item"})},
    )
    a_new = copy.deepcopy(a)
    a_new["defs"]["item"]["required"].remove("name")
    olds = {d["id"]: parse_document(d) for d in (a, c)}
    news = {d["id"]: parse_document(d) for d in (a_new, c)}
    assert compare(olds["com.example.a"], news["com.example.a"]) == []
    (change,) = compare_sets(olds, news)
    assert (change.document, change.path, change.rule) == (
        "com.example.a",
        "defs.item.properties.name",
        OPTIONAL,
    )
