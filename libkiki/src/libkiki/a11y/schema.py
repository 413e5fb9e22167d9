"""``schemas/a11y.fbs`` described for the verifier and writer in :mod:`libkiki.flatbuf`.

Enum values and the tables are listed here (the tables field by field in declaration order =
FlatBuffers field ids). ``tests/libkiki/a11y/test_a11y_codec.py`` compares this
description with ``flatc --jsonschema schemas/a11y.fbs`` so the two cannot drift apart.
"""

from __future__ import annotations

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


def _sequence(*names: str) -> dict[str, int]:
    return {name: value for value, name in enumerate(names)}


# The enums' values, as schemas/a11y.fbs numbers them (written out rather than read from the
# flatc-generated module, whose flatbuffers import pulls in numpy where it is installed: the
# a11y-server and `kiki status` start without it). test_a11y_codec checks them against it.
ROLES = _sequence(
    "unknown", "application", "window", "dialog", "alert", "alertDialog", "button",
    "toggleButton", "checkBox", "radioButton", "switch", "comboBox", "textField", "searchBox",
    "spinButton", "slider", "progressBar", "scrollBar", "label", "heading", "paragraph", "link",
    "image", "list", "listItem", "listBox", "option", "menu", "menuBar", "menuItem",
    "menuItemCheckBox", "menuItemRadio", "tabList", "tab", "tabPanel", "table", "row", "cell",
    "columnHeader", "rowHeader", "tree", "treeItem", "toolBar", "statusBar", "tooltip",
    "separator", "group", "form", "region", "document", "article", "navigation", "search",
    "banner", "main", "frame", "pane", "generic", "terminal", "canvas",
)  # fmt: skip
_STATE_FLAGS = (
    "focused", "focusable", "selected", "selectable", "checked", "mixed", "pressed", "expanded",
    "collapsed", "disabled", "hidden", "editable", "readOnly", "required", "invalid", "busy",
    "modal", "multiline", "multiselectable", "visited", "offscreen",
)  # fmt: skip
STATES = {name: 1 << bit for bit, name in enumerate(_STATE_FLAGS)}
ACTIONS = _sequence(
    "none", "press", "focus", "setValue", "scrollIntoView", "scrollUp", "scrollDown", "select",
    "expand", "collapse", "increment", "decrement", "showMenu", "dismiss",
)  # fmt: skip
CAUSES = _sequence("unknown", "app", "user", "agent")
BODY_MEMBERS = (
    "Hello", "GetInfo", "Info", "Error", "TreeUpdate", "Ack", "Subscribe", "Snapshot",
    "TreeGone", "Query", "QueryResult", "ActionRequest", "ActionResult", "Resync",
)  # fmt: skip

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
            text("role_name"),
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
