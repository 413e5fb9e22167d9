"""The compiled readers (the verifier on the trust boundary) against the reference interpreter.

The a11y schema is the test's schema: it has every kind of field (scalars, enums, bit flags,
structs, strings, tables, unions, and vectors of each).
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kikitest.a11y_fixtures import MESSAGES, form_tree
from libkiki.a11y import wire
from libkiki.a11y.schema import SCHEMA
from libkiki.errors import InvalidFrame
from libkiki.flatbuf import Chunk, Limits, Reader
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


def _shared_trees(count: int) -> bytes:
    """A Snapshot whose ``trees`` are ``count`` offsets to one TreeUpdate (legal FlatBuffers:
    the decoded size grows with ``count``, the frame by 4 bytes a tree)."""
    nodes = tuple(n._replace(description="d" * 40) for n in form_tree())
    one = wire.raw_tree_chunk(
        wire.RawTreeUpdate(7, 3, 2, 0, 1, [wire.node_chunk(n) for n in nodes], (9,), 0, None)
    )
    head = 4 + 4 * count
    pad = -head % 8
    offsets = [head + pad + one.entry - (4 + 4 * k) for k in range(count)]
    trees = Chunk(struct.pack(f"<I{count}I", count, *offsets) + b"\0" * pad + one.data, 0)
    return wire.encode_raw(0, wire.RawSnapshot(trees))  # type: ignore[arg-type]  # spliced as is


def test_the_budget_and_the_counts_run_out_where_the_interpreter_says() -> None:
    # Shared offsets make the decoded size pass the budget inside nested tables (in a node's
    # string, a vector, a table's own size, as the count and the budget vary). The compiled
    # readers keep the budget in a local handed to and back from each nested table, and must
    # run out exactly where the interpreter does; so must the per-table counts.
    outcomes = set()
    for count in range(1, 40):
        frame = _shared_trees(count)
        for limits in (
            *(Limits(max_depth=8, amplification=a) for a in (1, 2, 3, 5, 8)),
            Limits(max_depth=8, amplification=1000, max_count={"Node": 5 * count + 2}),
            Limits(max_depth=8, amplification=1000, max_tables=7 * count),
        ):
            try:
                compiled: object = Reader(SCHEMA, frame, limits).root()
            except InvalidFrame as exc:
                compiled = ("refused", str(exc))
            try:
                reference: object = interpret_root(SCHEMA, frame, limits)
            except InvalidFrame as exc:
                reference = ("refused", str(exc))
            assert compiled == reference
            outcomes.add(compiled[1] if isinstance(compiled, tuple) else "accepted")
    # Each of the limits was reached somewhere, and some frames were small enough to pass.
    assert "accepted" in outcomes
    assert any("far more memory" in o for o in outcomes)
    assert any("Node tables in one frame" in o for o in outcomes)
    assert any(o.endswith(" tables") for o in outcomes)
