"""Two unions in one table: the compiled readers and writers against the references.

The a11y schema has one union per table, so it cannot show a union's type carried over to the
next union; this small schema has two, with a table that is a member of both.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libkiki.errors import InvalidFrame, SchemaError
from libkiki.flatbuf import Chunk, Limits, Reader, Schema, Writer
from libkiki.flatbuf.interpret import interpret_root
from libkiki.flatbuf.schema import SCALAR, STRING, UNION, UTYPE, Field, TableDef, UnionDef

pytestmark = pytest.mark.unit


class A(NamedTuple):
    a: int


class B(NamedTuple):
    b: int
    s: str


class Root(NamedTuple):
    first: A | B | None
    second: A | None
    tail: int


_UNIONS = [UnionDef("First", ("A", "B")), UnionDef("Second", ("A",))]


def _schema(root_fields: tuple[Field, ...]) -> Schema:
    return Schema(
        tables=[
            TableDef("Root", root_fields),
            TableDef("A", (Field("a", SCALAR, "I"),)),
            TableDef("B", (Field("b", SCALAR, "I"), Field("s", STRING))),
        ],
        enums=[],
        structs=[],
        unions=_UNIONS,
        root="Root",
        file_identifier=b"TWOU",
    )


SCHEMA = _schema(
    (
        Field("first_type", UTYPE, "B", "First"),
        Field("first", UNION, ref="First"),
        Field("second_type", UTYPE, "B", "Second"),
        Field("second", UNION, ref="Second"),
        Field("tail", SCALAR, "H"),
    )
)
SCHEMA.bind("Root", Root)
SCHEMA.bind("A", A)
SCHEMA.bind("B", B)
LIMITS = Limits()


class Reference(Writer):
    def table(self, desc: TableDef, values: Any) -> Chunk:
        return self.reference_table(desc, values)


def _outcome(frame: bytes, *, interpret: bool) -> object:
    try:
        if interpret:
            return interpret_root(SCHEMA, frame, LIMITS)
        return Reader(SCHEMA, frame, LIMITS).root()
    except InvalidFrame as exc:
        return ("refused", str(exc))


def _second_type_slot(frame: bytes | bytearray) -> int:
    """Where the root's vtable holds the offset of ``second_type`` (field 2)."""
    root: int = struct.unpack_from("<I", frame, 0)[0]
    soffset: int = struct.unpack_from("<i", frame, root)[0]
    return root - soffset + 4 + 2 * 2


u32 = st.integers(0, (1 << 32) - 1)
a_tables = st.builds(A, u32)
roots = st.builds(
    Root,
    st.none() | a_tables | st.builds(B, u32, st.text(max_size=8)),
    st.none() | a_tables,
    st.integers(0, 65535),
)


@settings(max_examples=300, deadline=None)
@given(roots, st.lists(st.tuples(st.integers(0, 1 << 10), st.integers(0, 255)), max_size=4))
def test_compiled_code_behaves_exactly_like_the_references(
    root: Root, flips: list[tuple[int, int]]
) -> None:
    frame = Writer(SCHEMA).finish(root)
    assert frame == Reference(SCHEMA).finish(root)
    mutated = bytearray(frame)
    for pos, value in flips:
        mutated[pos % len(mutated)] = value
    data = bytes(mutated)
    assert _outcome(data, interpret=False) == _outcome(data, interpret=True)
    if not flips:
        assert _outcome(data, interpret=False) == root


@pytest.mark.parametrize("first", [A(5), B(7, "x")])
def test_the_second_union_absent_after_a_first_one_is_read_as_absent(first: A | B) -> None:
    root = Root(first, None, 3)
    assert Reader(SCHEMA, Writer(SCHEMA).finish(root), LIMITS).root() == root


@pytest.mark.parametrize("first", [None, A(5), B(7, "x")])
def test_a_union_value_without_its_type_is_no_member(first: A | B | None) -> None:
    # The second union's value is there but its type field is not: no member, whatever the
    # first union's type was.
    frame = bytearray(Writer(SCHEMA).finish(Root(first, A(9), 3)))
    struct.pack_into("<H", frame, _second_type_slot(frame), 0)
    data = bytes(frame)
    assert _outcome(data, interpret=True) == Root(first, None, 3)
    assert _outcome(data, interpret=False) == Root(first, None, 3)


_TYPE = Field("first_type", UTYPE, "B", "First")
_VALUE = Field("first", UNION, ref="First")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ((_TYPE,), "Root.first_type: a union type field must be followed by its union First"),
        (
            (_TYPE, Field("tail", SCALAR, "H"), _VALUE),
            "Root.first_type: a union type field must be followed by its union First",
        ),
        ((_VALUE,), "Root.first: a union must follow its type field of union First"),
        (
            (Field("second_type", UTYPE, "B", "Second"), _VALUE),
            "Root.second_type: a union type field must be followed by its union Second",
        ),
    ],
)
def test_a_union_apart_from_its_type_field_is_refused(
    fields: tuple[Field, ...], message: str
) -> None:
    with pytest.raises(SchemaError) as caught:
        _schema(fields)
    assert caught.value.message == message
