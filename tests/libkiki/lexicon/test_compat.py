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
