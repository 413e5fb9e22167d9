"""An object's check skips a property's own check when a cheaper condition shows it passes
(a short exact str, an int within its bounds, a bool). It must decide exactly as checking every
property with its own check does: the same values rejected, with the same path and rule."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libkiki.errors import ValidationError
from libkiki.lexicon import Registry
from libkiki.lexicon.validator import GENERATED_MAX_PROPERTIES

pytestmark = pytest.mark.unit

TYPES: dict[str, dict[str, Any]] = {
    "s1": {"type": "string", "maxLength": 40},
    "s2": {"type": "string", "maxGraphemes": 3},
    "s3": {"type": "string", "maxLength": 9, "maxGraphemes": 5},
    "s4": {"type": "string"},
    "s5": {"type": "string", "knownValues": ["ready", "stopping"]},
    "s6": {"type": "string", "minLength": 2},
    "i1": {"type": "integer", "minimum": 1, "maximum": 9},
    "i2": {"type": "integer", "minimum": -3},
    "i3": {"type": "integer"},
    "i4": {"type": "integer", "enum": [2, 4]},
    "b1": {"type": "boolean"},
    "b2": {"type": "boolean", "const": True},
    "n1": {"type": "integer", "minimum": 0},
    "o1": {"type": "object", "properties": {}},
}
REQUIRED = ["s1", "i1"]
NULLABLE = ["n1", "s4"]
NSID = "com.example.fast"


def registry() -> Registry:
    defs: dict[str, Any] = dict(TYPES)  # each type alone, checked by its own check only
    defs["obj"] = {
        "type": "object",
        "required": REQUIRED,
        "nullable": NULLABLE,
        "properties": TYPES,
    }
    found = Registry()
    assert found.add_json({"lexicon": 1, "id": NSID, "defs": defs}) == []
    return found


REGISTRY = registry()


def verdict(value: Any) -> tuple[str, str] | None:
    try:
        REGISTRY.validator(f"{NSID}#obj").validate(value)
    except ValidationError as exc:
        return exc.path, exc.rule
    return None


def expected(value: Any) -> tuple[str, str] | None:
    """Every property checked by its own type's check, in the order the lexicon lists them."""
    if not isinstance(value, dict):
        return "", "must be an object"
    for name in REQUIRED:
        if name not in value:
            return name, "is required"
    for name in TYPES:
        if name not in value or (value[name] is None and name in NULLABLE):
            continue
        try:
            REGISTRY.validator(f"{NSID}#{name}").validate(value[name])
        except ValidationError as exc:
            return name, exc.rule
    return None


class Text(str):
    pass


class Number(int):
    pass


VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-6, max_value=12),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=50),
    st.text(alphabet="aé✓😀\u0301", max_size=50),
    st.sampled_from(["ready", "stopping", "x" * 10, "x" * 11, "é" * 20, "é" * 21]),
    st.builds(Text, st.text(max_size=12)),
    st.builds(Number, st.integers(min_value=-6, max_value=12)),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(max_examples=600, deadline=None)
@given(st.dictionaries(st.sampled_from([*TYPES, "extra"]), VALUES))
def test_an_object_is_decided_as_by_each_property_s_own_check(value: dict[str, Any]) -> None:
    assert verdict(value) == expected(value)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"s1": "x", "i1": True}, ("i1", "must be an integer")),
        ({"s1": "x", "i1": 10}, ("i1", "must be at most 9")),
        ({"s1": "x", "i1": 0}, ("i1", "must be at least 1")),
        ({"s1": "😀" * 11, "i1": 1}, ("s1", "must be at most 40 bytes")),
        ({"s1": "x" * 40, "i1": 1}, None),
        ({"s1": "x", "i1": 1, "s2": "abcd"}, ("s2", "must be at most 3 graphemes")),
        ({"s1": "x", "i1": 1, "s2": "e\u0301" * 3}, None),
        ({"s1": "x", "i1": 1, "s3": "é" * 5}, ("s3", "must be at most 9 bytes")),
        ({"s1": "x", "i1": 1, "b1": 1}, ("b1", "must be a boolean")),
        ({"s1": "x", "i1": 1, "n1": None, "s4": None}, None),
        ({"s1": "x", "i1": 1, "i2": None}, ("i2", "must be an integer")),
        ({"s1": "x", "i1": 1, "i3": 2.0}, ("i3", "must be an integer")),
        ({"s1": "x", "i1": 1, "o1": []}, ("o1", "must be an object")),
        ({"s1": Text("x"), "i1": Number(3)}, None),
        ({"i1": 1}, ("s1", "is required")),
        (["s1"], ("", "must be an object")),
    ],
)
def test_a_skipped_check_would_have_passed(value: Any, problem: tuple[str, str] | None) -> None:
    assert verdict(value) == expected(value) == problem


def test_a_wide_object_is_checked_by_a_loop_that_decides_the_same() -> None:
    """An object of more properties than a generated check is made for (its source would cost
    time and memory per property, and a provider's lexicon decides how many) is checked by a
    loop: the same verdicts, with the same path and rule."""
    width = GENERATED_MAX_PROPERTIES + 1
    properties = {f"p{k}": TYPES["i1"] for k in range(width)}
    wide = Registry()
    defs = {
        "wide": {
            "type": "object",
            "required": ["p0"],
            "nullable": ["p1"],
            "properties": properties,
        }
    }
    assert wide.add_json({"lexicon": 1, "id": NSID, "defs": defs}) == []
    check = wide.validator(f"{NSID}#wide")
    check.validate({"p0": 1, "p1": None, f"p{width - 1}": 9})  # raises if refused
    for value, problem in [
        ({f"p{width - 1}": 1}, ("p0", "is required")),
        ({"p0": 1, f"p{width - 1}": 10}, (f"p{width - 1}", "must be at most 9")),
        ({"p0": True}, ("p0", "must be an integer")),
        ({"p0": 1, "p2": None}, ("p2", "must be an integer")),
    ]:
        with pytest.raises(ValidationError) as caught:
            check.validate(value)
        assert (caught.value.path, caught.value.rule) == problem


def test_an_integer_bound_of_any_size_is_never_written_into_source() -> None:
    """Bounds are bound as variables: one past the digits ``int`` may turn into text builds."""
    huge = 10**5000
    defs = {
        "obj": {
            "type": "object",
            "properties": {"i": {"type": "integer", "minimum": -huge, "maximum": huge}},
        }
    }
    found = Registry()
    assert found.add_json({"lexicon": 1, "id": NSID, "defs": defs}) == []
    check = found.validator(f"{NSID}#obj")
    check.validate({"i": huge})  # raises if refused
    with pytest.raises(ValidationError) as caught:
        check.validate({"i": "1"})
    assert (caught.value.path, caught.value.rule) == ("i", "must be an integer")
