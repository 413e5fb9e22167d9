"""``schemas/a11y.fbs`` described for the verifier and writer in :mod:`libkiki.flatbuf`.

Enum values come from the flatc-generated module; the tables are listed here field by field in
declaration order (= FlatBuffers field ids). ``tests/libkiki/a11y/test_a11y_codec.py`` compares this
description with ``flatc --jsonschema schemas/a11y.fbs`` so the two cannot drift apart.
"""

from __future__ import annotations

from libkiki._generated import a11y_generated as fb
from libkiki.flatbuf.schema import (
    BOOL,
    ENUM,
    FLAGS,
    SCALAR,
    STRING,
    STRUCT,
    TABLE,
    UNION,
    UTYPE,
    VEC_ENUM,
    VEC_SCALAR,
    VEC_STRING,
    VEC_TABLE,
    EnumDef,
    Field,
    Schema,
    StructDef,
    TableDef,
    UnionDef,
)

FILE_IDENTIFIER = b"KA11"


def _values(cls: type) -> dict[str, int]:
    return {k: v for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


ROLES = _values(fb.Role)
STATES = _values(fb.State)
ACTIONS = _values(fb.Action)
CAUSES = _values(fb.Cause)
BODY_MEMBERS = tuple(
    name for name, _ in sorted(_values(fb.Body).items(), key=lambda kv: kv[1]) if name != "NONE"
)

ENUMS = (
    EnumDef("Role", "H", ROLES),
    EnumDef("State", "I", STATES, flags=True),
    EnumDef("Action", "B", ACTIONS),
    EnumDef("Cause", "B", CAUSES),
)
STRUCTS = (StructDef("Rect", "iiii", ("x", "y", "width", "height")),)
UNIONS = (UnionDef("Body", BODY_MEMBERS),)


def u32(name: str) -> Field:
    return Field(name, SCALAR, "I")


def u64(name: str) -> Field:
    return Field(name, SCALAR, "Q")


def text(name: str, *, required: bool = False) -> Field:
    return Field(name, STRING, required=required)


TABLES = (
    TableDef(
        "Node",
        (
            u32("id"),
            Field("role", ENUM, "H", "Role"),
            text("name"),
            text("description"),
            text("value"),
            Field("states", FLAGS, "I", "State"),
            Field("bounds", STRUCT, ref="Rect"),
            Field("actions", VEC_ENUM, "B", "Action"),
            Field("children", VEC_SCALAR, "I"),
            u32("tree_id"),
        ),
    ),
    TableDef(
        "App",
        (
            u32("tree_id"),
            text("app_id"),
            Field("pid", SCALAR, "i"),
            u32("uid"),
            text("unit"),
            text("label"),
        ),
    ),
    TableDef(
        "TreeUpdate",
        (
            u32("tree_id"),
            u64("seq"),
            u64("base_seq"),
            u32("node_id_to_clear"),
            u32("root_id"),
            Field("nodes", VEC_TABLE, ref="Node"),
            Field("removed", VEC_SCALAR, "I"),
            Field("cause", ENUM, "B", "Cause"),
            Field("app", TABLE, ref="App"),
        ),
    ),
    TableDef("Ack", (u32("tree_id"), u64("seq"))),
    TableDef(
        "Subscribe",
        (
            Field("apps", VEC_STRING),
            u32("tree_id"),
            u32("root_id"),
            Field("roles", VEC_ENUM, "H", "Role"),
            Field("max_depth", SCALAR, "H"),
        ),
    ),
    TableDef("Snapshot", (Field("trees", VEC_TABLE, ref="TreeUpdate"),)),
    TableDef("TreeGone", (u32("tree_id"), Field("app", TABLE, ref="App"))),
    TableDef(
        "Query",
        (
            u32("tree_id"),
            text("app_id"),
            Field("role", ENUM, "H", "Role"),
            text("name"),
            text("text"),
            Field("states", FLAGS, "I", "State"),
            u32("limit"),
        ),
    ),
    TableDef("QueryResult", (Field("nodes", VEC_TABLE, ref="Node"), u32("total"))),
    TableDef(
        "ActionRequest",
        (
            u32("tree_id"),
            u32("node_id"),
            Field("action", ENUM, "B", "Action"),
            text("value"),
            u32("timeout_ms"),
        ),
    ),
    TableDef("ActionResult", (text("message"),)),
    TableDef("Resync", (u32("tree_id"), text("reason"))),
    TableDef("Hello", (Field("protocol_version", SCALAR, "H"), text("peer"))),
    TableDef("GetInfo", ()),
    TableDef("Counter", (text("name", required=True), Field("value", SCALAR, "q"))),
    TableDef(
        "Info",
        (
            text("name"),
            text("version"),
            Field("pid", SCALAR, "i"),
            u64("uptime_ms"),
            text("status"),
            Field("counters", VEC_TABLE, ref="Counter"),
        ),
    ),
    TableDef("Error", (Field("code", SCALAR, "i"), text("message"))),
    TableDef(
        "Message",
        (
            u32("request_id"),
            Field("body_type", UTYPE, "B", "Body"),
            Field("body", UNION, ref="Body"),
        ),
    ),
)

__all__ = ["BOOL", "FILE_IDENTIFIER", "SCHEMA", "TABLES"]

SCHEMA = Schema(
    tables=TABLES,
    enums=ENUMS,
    structs=STRUCTS,
    unions=UNIONS,
    root="Message",
    file_identifier=FILE_IDENTIFIER,
)
