"""The schema description, the verifier-decoder and the splicing writer.

The independent decoder is ``flatc`` (it has no verifier of its own for ``--json``: given a bad
buffer it crashes, which makes it a sharp oracle for ours). Buffers built by the flatbuffers
runtime's generated code and by ``flatc -b`` from JSON must decode with our reader too.
"""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path
from typing import Any

import flatbuffers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kikitest.a11y_fixtures import (
    APP,
    FLATC,
    MESSAGES,
    SCHEMA,
    big_tree,
    flatc_json,
    message_as_flatc,
    normalize,
)
from libkiki._generated import a11y_generated as fb
from libkiki.a11y import wire
from libkiki.a11y.schema import SCHEMA as DESC
from libkiki.errors import InvalidFrame
from libkiki.flatbuf import Chunk, Limits, Writer, schema
from libkiki.flatbuf.writer import string_chunk

pytestmark = pytest.mark.integration

# -- the description matches the schema ------------------------------------------------------

_RANGES = {
    "H": (0, 2**16 - 1),
    "I": (0, 2**32 - 1),
    "Q": (0, 2**64 - 1),
    "i": (-(2**31), 2**31 - 1),
    "q": (-(2**63), 2**63 - 1),
    "B": (0, 255),
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/definitions/kiki_a11y_{name}"}


def _expected(f: schema.Field) -> dict[str, Any]:
    def integer(fmt: str) -> dict[str, Any]:
        lo, hi = _RANGES[fmt]
        return {"type": "integer", "minimum": lo, "maximum": hi}

    match f.kind:
        case schema.SCALAR:
            return integer(f.fmt)
        case schema.BOOL:
            return {"type": "boolean"}
        case schema.STRING:
            return {"type": "string"}
        case schema.ENUM | schema.FLAGS | schema.STRUCT | schema.TABLE | schema.UTYPE:
            return _ref(f.ref)
        case schema.UNION:
            return {"anyOf": [_ref(m) for m in DESC.unions[f.ref].members]}
        case schema.VEC_SCALAR:
            return {"type": "array", "items": integer(f.fmt)}
        case schema.VEC_STRING:
            return {"type": "array", "items": {"type": "string"}}
    return {"type": "array", "items": _ref(f.ref)}


def test_description_matches_flatc_jsonschema(tmp_path: Path) -> None:
    subprocess.run(
        [str(FLATC), "--jsonschema", "-o", str(tmp_path), str(SCHEMA)], check=True, timeout=30
    )
    defs = json.loads((tmp_path / "a11y.schema.json").read_text())["definitions"]
    tables = {k.removeprefix("kiki_a11y_"): v for k, v in defs.items() if "properties" in v}
    structs = set(DESC.structs)
    assert set(tables) == set(DESC.tables) | structs
    for name, desc in DESC.tables.items():
        props = tables[name]["properties"]
        assert list(props) == [f.name for f in desc.fields], name
        for f in desc.fields:
            assert props[f.name] == _expected(f), f"{name}.{f.name}"
        required = [f.name for f in desc.fields if f.required]
        assert tables[name].get("required", []) == required, name
    for name, sd in DESC.structs.items():
        assert list(tables[name]["properties"]) == list(sd.fields)
    for name, ed in DESC.enums.items():
        assert defs[f"kiki_a11y_{name}"]["enum"] == list(ed.values), name
    body = defs["kiki_a11y_Body"]["enum"]
    assert body == ["NONE", *DESC.unions["Body"].members]


# -- round trips and interop ------------------------------------------------------------------


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_roundtrip(message: wire.Message) -> None:
    assert wire.decode(wire.encode(message)) == message


def test_we_decode_what_the_generated_builder_writes() -> None:
    # The flatbuffers runtime lays out buffers back to front with shared vtables.
    b = flatbuffers.Builder(256)
    name = b.CreateString("Save")
    fb.NodeStartChildrenVector(b, 2)
    b.PrependUint32(6)
    b.PrependUint32(5)
    kids = b.EndVector()
    nodes = []
    for node_id in (1, 2):
        fb.NodeStart(b)
        fb.NodeAddId(b, node_id)
        fb.NodeAddRole(b, fb.Role.button)
        fb.NodeAddName(b, name)
        fb.NodeAddStates(b, fb.State.focused | fb.State.checked)
        fb.NodeAddBounds(b, fb.CreateRect(b, 1, -2, 3, 4))
        if node_id == 1:
            fb.NodeAddChildren(b, kids)
        nodes.append(fb.NodeEnd(b))
    fb.TreeUpdateStartNodesVector(b, 2)
    for n in reversed(nodes):
        b.PrependUOffsetTRelative(n)
    vec = b.EndVector()
    fb.TreeUpdateStart(b)
    fb.TreeUpdateAddSeq(b, 2**40)
    fb.TreeUpdateAddRootId(b, 1)
    fb.TreeUpdateAddNodes(b, vec)
    update = fb.TreeUpdateEnd(b)
    fb.MessageStart(b)
    fb.MessageAddRequestId(b, 77)
    fb.MessageAddBodyType(b, fb.Body.TreeUpdate)
    fb.MessageAddBody(b, update)
    b.Finish(fb.MessageEnd(b), b"KA11")
    decoded = wire.decode(bytes(b.Output()))
    states = wire.STATES["focused"] | wire.STATES["checked"]
    common = dict(role=wire.ROLES["button"], name="Save", states=states, bounds=(1, -2, 3, 4))
    assert decoded == wire.TreeUpdate(
        77,
        seq=2**40,
        root_id=1,
        nodes=(wire.Node(1, children=(5, 6), **common), wire.Node(2, **common)),  # type: ignore[arg-type]
    )


def test_spliced_chunks_are_position_independent() -> None:
    nodes = big_tree(50)
    chunks = [wire.node_chunk(n) for n in nodes]
    for k in (0, 1, 7):  # different positions in different buffers
        raw = wire.RawTreeUpdate(3, 9, 8, 0, 1, chunks[k:], (), 0, wire.app_chunk(APP))
        decoded = wire.decode(wire.encode_raw(5, raw))
        assert isinstance(decoded, wire.TreeUpdate)
        assert decoded.nodes == tuple(nodes[k:])
        assert decoded.app == APP
    assert all(len(c.data) % 8 == 0 for c in chunks)


# -- the verifier ------------------------------------------------------------------------------


def _frame(message: wire.Message) -> bytearray:
    return bytearray(wire.encode(message))


def test_refuses_truncation_at_every_length() -> None:
    message = MESSAGES[4]
    frame = wire.encode(message)
    refused = 0
    for n in range(len(frame)):
        try:
            decoded = wire.decode(frame[:n])
        except InvalidFrame:
            refused += 1
            continue
        # Only trailing padding may go: what is left must still be the whole message.
        assert decoded == message
        assert n >= len(frame) - 7
    assert refused >= len(frame) - 7


def _find(frame: bytes | bytearray, needle: bytes) -> int:
    pos = frame.find(needle)
    assert pos >= 0
    return pos


def test_refuses_invalid_utf8_and_missing_terminator() -> None:
    frame = _frame(wire.Hello(1, 1, "agent"))
    pos = _find(frame, b"agent")
    bad = bytearray(frame)
    bad[pos] = 0xFF
    with pytest.raises(InvalidFrame, match="UTF-8"):
        wire.decode(bytes(bad))
    bad = bytearray(frame)
    bad[pos + 5] = ord("!")
    with pytest.raises(InvalidFrame, match="NUL"):
        wire.decode(bytes(bad))


def _field_at(frame: bytes, slot: int, *, in_body: bool = True) -> int:
    """Where field ``slot`` of the message (or of its body table) is, read via the runtime."""
    msg = fb.Message.GetRootAs(frame, 0)
    tab = msg._tab  # type: ignore[attr-defined]
    if in_body:
        tab = msg.Body()
    off: int = tab.Offset(4 + 2 * slot)
    assert off
    return int(tab.Pos) + off


def test_refuses_unknown_enum_flag_and_union_values() -> None:
    frame = bytes(_frame(wire.Query(1, role=wire.ROLES["button"], states=wire.STATES["focused"])))
    bad = bytearray(frame)
    struct.pack_into("<H", bad, _field_at(frame, 2), 999)
    with pytest.raises(InvalidFrame, match="is not a Role"):
        wire.decode(bytes(bad))
    bad = bytearray(frame)
    struct.pack_into("<I", bad, _field_at(frame, 5), 1 << 30)
    with pytest.raises(InvalidFrame, match="unknown State bits"):
        wire.decode(bytes(bad))
    bad = bytearray(frame)
    bad[_field_at(frame, 1, in_body=False)] = 200
    with pytest.raises(InvalidFrame, match="unknown Body type 200"):
        wire.decode(bytes(bad))


def test_refuses_missing_required_field() -> None:
    frame = wire.encode(wire.Info(1, "n", "v", 1, 1, "s", (("", 1),)))
    # Our writer always writes a required field; zero its vtable slot by hand.
    bad = bytearray(frame)
    body = fb.Message.GetRootAs(frame, 0).Body()
    assert body is not None
    info = fb.Info()
    info.Init(body.Bytes, body.Pos)
    counter = info.Counters(0)
    assert counter is not None
    pos = counter._tab.Pos  # type: ignore[attr-defined]
    vtable = pos - struct.unpack_from("<i", frame, pos)[0]
    struct.pack_into("<H", bad, vtable + 4, 0)
    with pytest.raises(InvalidFrame, match=r"Counter\.name is required"):
        wire.decode(bytes(bad))


def test_node_count_and_nesting_limits() -> None:
    frame = wire.encode(wire.TreeUpdate(1, root_id=1, nodes=tuple(big_tree(101))))
    with pytest.raises(InvalidFrame, match="more than 100 Node"):
        wire.decode(frame, Limits(max_count={"Node": 100}))
    with pytest.raises(InvalidFrame, match="nested deeper"):
        wire.decode(frame, Limits(max_depth=2))
    assert isinstance(wire.decode(frame, Limits(max_count={"Node": 101})), wire.TreeUpdate)


def test_shared_offsets_cannot_amplify_a_small_frame() -> None:
    # 20 000 vector entries all pointing at one 4 KiB string: valid FlatBuffers, 80 MB decoded.
    big = string_chunk("x" * 4096)
    count = 20_000
    head = 4 + 4 * count
    offsets = [head + (-head % 8) - (4 + 4 * k) for k in range(count)]
    vec = struct.pack(f"<I{count}I", count, *offsets) + b"\0" * (-head % 8) + big.data
    sub = Chunk(vec, 0)

    class Apps:
        apps = sub
        tree_id = root_id = max_depth = 0
        roles = ()

    DESC.bind("Subscribe", Apps, encode_only=True)
    frame = Writer(DESC).finish(wire._Envelope(0, Apps()))
    with pytest.raises(InvalidFrame, match="far more memory"):
        wire.decode(frame)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(MESSAGES),
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(0, 3),
)
def test_mutations_are_refused_or_decode_exactly_as_flatc_reads_them(
    message: wire.Message, flips: list[tuple[int, int]], cut: int
) -> None:
    frame = bytearray(wire.encode(message))
    for pos, value in flips:
        frame[pos % len(frame)] = value
    data = bytes(frame[: len(frame) - cut * 4])
    try:
        decoded = wire.decode(data)
    except InvalidFrame:
        return
    # Accepted: then the buffer is sound (flatc, which trusts it blindly, must not crash on it)
    # and holds exactly what we decoded -- no garbage.
    doc = flatc_json(data)
    assert doc is not None, "we accepted a buffer flatc cannot read"
    assert normalize(doc) == normalize(message_as_flatc(decoded))


def test_the_enum_values_are_flatcs() -> None:
    # schema.py writes them out (the generated module's import of flatbuffers costs numpy).
    def values(cls: type) -> dict[str, int]:
        return {k: v for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}

    assert values(fb.Role) == DESC.enums["Role"].values
    assert values(fb.State) == DESC.enums["State"].values
    assert values(fb.Action) == DESC.enums["Action"].values
    assert values(fb.Cause) == DESC.enums["Cause"].values
    body = sorted((v, k) for k, v in values(fb.Body).items() if k != "NONE")
    assert [k for _, k in body] == list(DESC.unions["Body"].members)
