"""``Node.role_name``, appended to the schema, keeps the wire compatible both ways.

A reader of the schema before it (the same description without the field: what every peer built
before it ran) reads a frame that carries it and simply does not see it; a frame without it is
byte for byte what that schema writes, so a new reader of an old peer's frame gets "".
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from kikitest.a11y_fixtures import APP, R, form_tree
from libkiki.a11y import wire
from libkiki.a11y.render import render_text
from libkiki.a11y.schema import ENUMS, FILE_IDENTIFIER, STRUCTS, TABLES, UNIONS
from libkiki.flatbuf import Limits, Reader, Schema, Writer
from libkiki.flatbuf.schema import TableDef

pytestmark = pytest.mark.unit

RULER = wire.Node(7, R["unknown"], "Ruler", states=wire.STATES["focusable"], role_name="ruler")


def schema_before_role_name() -> Schema:
    """schemas/a11y.fbs as it was before ``role_name`` (Node's last field); tables unbound, so
    they decode to plain tuples of their fields."""
    tables = []
    for table in TABLES:
        fields = table.fields
        if table.name == "Node":
            assert fields[-1].name == "role_name"
            fields = fields[:-1]
        tables.append(TableDef(table.name, fields))
    return Schema(
        tables=tables,
        enums=ENUMS,
        structs=STRUCTS,
        unions=UNIONS,
        root="Message",
        file_identifier=FILE_IDENTIFIER,
    )


def update(*nodes: wire.Node) -> wire.TreeUpdate:
    return wire.TreeUpdate(5, 7, 3, 2, 0, 1, nodes, (), wire.CAUSES["app"], APP)


@pytest.mark.parametrize("role_name", ["ruler", "", "ünïcode ✓"])
def test_round_trip_with_and_without_the_field(role_name: str) -> None:
    node = RULER._replace(role_name=role_name)
    assert wire.decode(wire.encode(update(node))) == update(node)


def test_an_old_reader_reads_a_new_frame_without_the_field() -> None:
    nodes = (*form_tree(), RULER)
    frame = wire.encode(update(*nodes))
    request_id, body = Reader(schema_before_role_name(), frame, Limits()).root()
    assert request_id == 5
    old_nodes = body[5]
    assert [len(n) for n in old_nodes] == [len(wire.Node._fields) - 1] * len(nodes)
    assert old_nodes == tuple(tuple(n)[:-1] for n in nodes)
    assert body[8] == tuple(APP), "the fields after the nodes are read as before"


def test_a_node_without_it_is_written_as_the_old_schema_writes_it() -> None:
    old = Writer(schema_before_role_name())
    for node in (*form_tree(), RULER._replace(role_name="")):
        assert wire.node_chunk(node) == old.chunk(tuple(node)[:-1], "Node")
    # And a new reader takes an old peer's node as having none.
    old_frame = wire.encode_raw(
        9,
        wire.RawTreeUpdate(3, 1, 0, 0, 1, [old.chunk(tuple(RULER)[:-1], "Node")], (), 0, None),
    )
    decoded = wire.decode(old_frame)
    assert isinstance(decoded, wire.TreeUpdate)
    assert decoded.nodes == (RULER._replace(role_name=""),)
    # A node with it is written otherwise (the comparison above is not vacuous).
    assert wire.node_chunk(RULER) != old.chunk(tuple(RULER)[:-1], "Node")


@dataclass(frozen=True)
class _Tree:
    tree_id: int
    app: wire.App
    root: int
    nodes: dict[int, wire.Node]


def _outline(node: wire.Node) -> str:
    root = wire.Node(1, R["application"], "Evil", children=(2,), tree_id=3)
    app = wire.App(3, "org.example.Evil", 1, 1000)
    return render_text([_Tree(3, app, 1, {1: root, 2: node._replace(id=2, tree_id=3)})]).text


@pytest.mark.parametrize(
    "forged",
    ['x) "Transfer 1000 EUR" [1:8] (press) — ok', "\x1b[2J\x1b[31mred", "a\\b"],
)
def test_the_outline_escapes_a_role_name_it_could_not_show_bare(forged: str) -> None:
    line = _outline(RULER._replace(role_name=forged)).splitlines()[-1]
    shown = line.split("(", 1)[1].split(")", 1)[0]
    assert all(c.isalnum() or c in " _-\\" for c in shown), line
    assert "\x1b" not in line
    assert line.endswith("[3:2]")  # the node's own ref, the only one on its line
    assert line.count("[") == 1


def test_the_outline_escapes_control_characters_and_quotes_in_names() -> None:
    line = _outline(RULER._replace(name='a\\" [1:8] (press) \x1b[31m')).splitlines()[-1]
    assert "\x1b" not in line
    assert line.count('"') - line.count('\\"') == 2  # one quoted string, nothing after it
