"""The compiled writers against the reference writer: the same bytes for every object.

The a11y schema is the test's schema: it has every kind of field (scalars with defaults, enums,
bit flags, a struct, strings, tables, a union, vectors of scalars, enums, strings and tables),
and the server hands the writer pre-encoded chunks in place of nodes, apps and vectors.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kikitest.a11y_fixtures import MESSAGES, big_tree
from libkiki.a11y import wire
from libkiki.a11y.schema import ACTIONS, ROLES, SCHEMA, STATES
from libkiki.flatbuf import Chunk, Writer
from libkiki.flatbuf.compiled_writer import writer_source
from libkiki.flatbuf.schema import TableDef

pytestmark = pytest.mark.unit


class Reference(Writer):
    """Every table, nested ones too, written by the reference writer."""

    def table(self, desc: TableDef, values: Any) -> Chunk:
        return self.reference_table(desc, values)


REFERENCE = Reference(SCHEMA)
COMPILED = Writer(SCHEMA)

u32 = st.integers(0, (1 << 32) - 1)
text = st.text(max_size=20)
nodes = st.builds(
    wire.Node,
    u32,
    st.sampled_from(sorted(ROLES.values())),
    text,
    text,
    text,
    st.sets(st.sampled_from(sorted(STATES.values()))).map(sum),
    st.none() | st.tuples(*[st.integers(-(1 << 31), (1 << 31) - 1)] * 4),
    st.lists(st.sampled_from(sorted(ACTIONS.values())), max_size=5).map(tuple),
    # A list is written like a tuple (the compiled writer's fast path takes tuples).
    st.lists(u32, max_size=9).map(tuple) | st.lists(u32, max_size=3),
    u32,
    st.sampled_from(["", "block quote", "ruler"]),
)
apps = st.none() | st.builds(wire.App, u32, text, st.integers(-5, 1 << 20), u32, text, text)
updates = st.builds(
    wire.TreeUpdate,
    u32,
    u32,
    st.integers(0, (1 << 64) - 1),
    st.integers(0, (1 << 64) - 1),
    u32,
    u32,
    st.lists(nodes, max_size=4).map(tuple),
    st.lists(u32, max_size=5).map(tuple),
    st.sampled_from(sorted(wire.CAUSES.values())),
    apps,
)
messages = (
    updates
    | st.builds(
        wire.Snapshot,
        u32,
        # a nested update carries no request id of its own
        st.lists(updates.map(lambda u: dataclasses.replace(u, request_id=0)), max_size=3).map(
            tuple
        ),
    )
    | st.builds(
        wire.Subscribe,
        u32,
        st.lists(text, max_size=3).map(tuple),
        u32,
        u32,
        st.lists(st.sampled_from(sorted(ROLES.values())), max_size=3).map(tuple),
        st.integers(0, 65535),
    )
    | st.sampled_from(MESSAGES)
)


def _both(message: wire.Message) -> tuple[bytes, bytes]:
    envelope = wire._Envelope(message.request_id, message)
    return REFERENCE.finish(envelope), COMPILED.finish(envelope)


@settings(max_examples=150, deadline=None)
@given(messages)
def test_compiled_writers_build_the_reference_bytes(message: wire.Message) -> None:
    reference, compiled = _both(message)
    assert compiled == reference
    wire.decode(compiled)  # a sound buffer (that it holds the message: the codec's tests)


@settings(max_examples=100, deadline=None)
@given(nodes, apps)
def test_spliced_chunks_are_written_as_the_reference_writes_them(
    node: wire.Node, app: wire.App | None
) -> None:
    # What the server does: nodes and the app as kept chunks, spliced into a fresh update.
    raw = wire.RawTreeUpdate(
        3,
        9,
        8,
        0,
        node.id,
        [COMPILED.chunk(node), REFERENCE.chunk(node)],
        (1, 2),
        0,
        COMPILED.chunk(app) if app is not None else None,
    )
    assert COMPILED.chunk(node) == REFERENCE.chunk(node)
    envelope = wire._Envelope(5, wire.RawSnapshot([COMPILED.chunk(raw)]))
    assert COMPILED.finish(envelope) == REFERENCE.finish(envelope)


def test_a_whole_tree_and_every_message_alike() -> None:
    tree = tuple(big_tree(500))
    for message in [*MESSAGES, wire.TreeUpdate(1, 2, 3, 0, 0, 1, tree, (), 0, None)]:
        reference, compiled = _both(message)
        assert compiled == reference, type(message).__name__


def test_an_unbound_object_is_refused_as_the_reference_refuses_it() -> None:
    class Stranger:
        pass

    update = wire.TreeUpdate(1, nodes=(Stranger(),))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Stranger is not bound to a table"):
        COMPILED.finish(wire._Envelope(1, update))
    with pytest.raises(TypeError, match="Stranger is not bound to a table"):
        REFERENCE.finish(wire._Envelope(1, update))


def test_the_compiled_source_is_there_to_read() -> None:
    source = writer_source(SCHEMA)
    assert "def write_Node(w, values):" in source
    assert "def write_Message(w, values):" in source
