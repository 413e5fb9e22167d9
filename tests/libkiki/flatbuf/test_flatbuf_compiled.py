"""The compiled readers (the verifier on the trust boundary) against the reference interpreter.

The a11y schema is the test's schema: it has every kind of field (scalars, enums, bit flags,
structs, strings, tables, unions, and vectors of each).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kikitest.a11y_fixtures import MESSAGES
from libkiki.a11y import wire
from libkiki.a11y.schema import SCHEMA
from libkiki.errors import InvalidFrame
from libkiki.flatbuf import Reader
from libkiki.flatbuf.compiled import reader_source
from libkiki.flatbuf.interpret import interpret_root

pytestmark = pytest.mark.unit


def _outcome(frame: bytes, *, interpret: bool) -> object:
    try:
        if interpret:
            return interpret_root(SCHEMA, frame, wire.DEFAULT_LIMITS)
        return Reader(SCHEMA, frame, wire.DEFAULT_LIMITS).root()
    except InvalidFrame as exc:
        return ("refused", str(exc))


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(MESSAGES),
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_compiled_readers_behave_exactly_like_the_interpreter(
    message: wire.Message, flips: list[tuple[int, int]]
) -> None:
    frame = bytearray(wire.encode(message))
    for pos, value in flips:
        frame[pos % len(frame)] = value
    data = bytes(frame)
    assert _outcome(data, interpret=False) == _outcome(data, interpret=True)


def test_both_readers_refuse_a_wrong_file_identifier() -> None:
    frame = bytearray(wire.encode(wire.GetInfo(1)))
    frame[4:8] = b"XXXX"
    refused = _outcome(bytes(frame), interpret=False)
    assert refused == _outcome(bytes(frame), interpret=True)
    assert isinstance(refused, tuple)
    assert "file identifier" in refused[1]


def test_the_compiled_source_is_there_to_read() -> None:
    source = reader_source(SCHEMA)
    assert "def read_Node(r, pos, depth):" in source
    assert 'raise InvalidFrame(f"Node.role: {x} is not a Role")' in source
