"""Data validation: interop record vectors, error paths and rules, property tests."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kikitest.lexicon_strategies import invalid_variants, valid_data
from kikitest.lexicon_testdata import data_path
from libkiki.errors import LexiconError, ValidationError
from libkiki.lexicon import Registry
from libkiki.lexicon.model import ProcedureType

pytestmark = pytest.mark.unit


def record_cases(name: str) -> list[dict[str, Any]]:
    loaded: list[dict[str, Any]] = json.loads(
        data_path("atproto-interop", "lexicon", name).read_text()
    )
    assert loaded
    return loaded


@pytest.mark.parametrize("case", record_cases("record-data-valid.json"), ids=lambda c: c["name"])
def test_valid_records_are_accepted(atproto: Registry, case: dict[str, Any]) -> None:
    atproto.validator(case["data"]["$type"]).validate(case["data"])


@pytest.mark.parametrize("case", record_cases("record-data-invalid.json"), ids=lambda c: c["name"])
def test_invalid_records_are_rejected(atproto: Registry, case: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        atproto.validator(case["data"]["$type"]).validate(case["data"])


@pytest.mark.parametrize(
    "value",
    [
        False,
        {"$bytes": "123"},
        {"$link": "bafyreiclp443lavogvhj3d2ob2cxbfuscni2k5jk7bebjzg7khl3esabwq"},
    ],
)
def test_unknown_must_be_a_plain_object(atproto: Registry, value: Any) -> None:
    with pytest.raises(ValidationError, match=r"^unknown: "):
        atproto.validator("example.lexicon.record").validate({"integer": 1, "unknown": value})


TRACKS: dict[str, Any] = {
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
                        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}},
                    },
                },
            },
        },
        "track": {
            "type": "object",
            "required": ["title"],
            "properties": {"title": {"type": "string", "maxGraphemes": 256}},
        },
    },
}


@pytest.fixture
def enqueue() -> Registry:
    registry = Registry()
    assert registry.add_json(TRACKS) == []
    return registry


@pytest.mark.parametrize(
    ("value", "path", "rule"),
    [
        ({"track": {"title": "x" * 257}}, "input.track.title", "must be at most 256 graphemes"),
        ({"track": {}}, "input.track.title", "is required"),
        ({}, "input.track", "is required"),
        ({"track": {"title": 3}}, "input.track.title", "must be a string"),
        (
            {"track": {"title": "a"}, "tags": ["ok", "far too long"]},
            "input.tags[1]",
            "must be at most 8 bytes",
        ),
        ([], "input", "must be an object"),
    ],
)
def test_errors_give_path_and_rule(enqueue: Registry, value: Any, path: str, rule: str) -> None:
    with pytest.raises(ValidationError) as info:
        enqueue.validator("com.example.music.enqueue").input(value)
    assert (info.value.path, info.value.rule) == (path, rule)
    assert str(info.value) == f"{path}: {rule}"
    assert info.value.data == {"path": path, "rule": rule}


def test_graphemes_not_code_points(enqueue: Registry) -> None:
    family = "👩‍👩‍👦‍👦"  # 7 code points, one grapheme
    enqueue.validator("com.example.music.enqueue").input({"track": {"title": family * 256}})


def test_xrpc_parts(kiki: Registry) -> None:
    seek = kiki.validator("dev.kiki.media.seek")
    seek.input({"offsetUs": -5_000_000})
    with pytest.raises(ValidationError, match=r"^input.offsetUs: must be an integer$"):
        seek.input({"offsetUs": 1.5})
    read = kiki.validator("dev.kiki.sensor.read")
    read.params({"sensor": "accel0", "count": 4})
    with pytest.raises(ValidationError, match=r"^params.count: must be at most 1024$"):
        read.params({"sensor": "accel0", "count": 5000})
    info = kiki.validator("dev.kiki.service.getInfo")
    answer = {"name": "tool-broker", "version": "0.1.0", "pid": 42, "uptimeSeconds": 3}
    info.output({**answer, "status": "ready", "counters": {"calls": 7}})
    with pytest.raises(ValidationError, match=r"^output.status: is required$"):
        info.output(answer)
    with pytest.raises(ValidationError, match=r"^output: must be an object$"):
        info.validate_part("output", None)
    with pytest.raises(LexiconError):
        info.input({})


def test_closed_and_open_unions(atproto: Registry) -> None:
    record = atproto.validator("example.lexicon.record")
    base = {"$type": "example.lexicon.record", "integer": 1}
    record.validate({**base, "union": {"$type": "com.example.other#thing", "z": 1}})
    with pytest.raises(ValidationError, match=r"^closedUnion: \$type"):
        record.validate({**base, "closedUnion": {"$type": "com.example.other#thing"}})
    with pytest.raises(ValidationError, match=r"^\$type: must be 'example.lexicon.record'$"):
        record.validate({**base, "$type": "example.lexicon.query"})


def test_unresolvable_definition_is_a_lexicon_error(kiki: Registry) -> None:
    with pytest.raises(LexiconError, match="does not resolve"):
        kiki.validator("dev.kiki.media.nope")


# -- property tests -------------------------------------------------------------------------------


def kiki_inputs(kiki: Registry) -> list[str]:
    return [
        d.id
        for d in kiki.documents()
        if isinstance(d.defs.get("main"), ProcedureType)
        and getattr(d.defs["main"], "input", None) is not None
    ]


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_generated_valid_inputs_validate(kiki: Registry, data: st.DataObject) -> None:
    nsid = data.draw(st.sampled_from(kiki_inputs(kiki)))
    definition = kiki.document(nsid).defs["main"]
    assert isinstance(definition, ProcedureType)
    assert definition.input is not None
    assert definition.input.schema is not None
    value = data.draw(valid_data(kiki, definition.input.schema))
    kiki.validator(nsid).input(value)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_inputs_are_rejected(kiki: Registry, data: st.DataObject) -> None:
    nsid = data.draw(st.sampled_from(kiki_inputs(kiki)))
    definition = kiki.document(nsid).defs["main"]
    assert isinstance(definition, ProcedureType)
    assert definition.input is not None
    assert definition.input.schema is not None
    value = data.draw(valid_data(kiki, definition.input.schema))
    variants = invalid_variants(kiki, definition.input.schema, value)
    if not variants:
        return
    mutated = data.draw(st.sampled_from(variants))
    with pytest.raises(ValidationError):
        kiki.validator(nsid).input(mutated)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_catalog_record_properties(atproto: Registry, data: st.DataObject) -> None:
    _, definition = atproto.resolve("example.lexicon.record")
    schema = definition.record  # type: ignore[union-attr]
    value = data.draw(valid_data(atproto, schema))
    validator = atproto.validator("example.lexicon.record")
    validator.validate(value)
    variants = invalid_variants(atproto, schema, value)
    if variants:
        with pytest.raises(ValidationError):
            validator.validate(data.draw(st.sampled_from(variants)))
