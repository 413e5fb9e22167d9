"""The schema's writers compiled: one function per table, the reference writer's choices made.

:meth:`Writer.reference_table <libkiki.flatbuf.writer.Writer.reference_table>` decides, field by
field and for every object, what kind of field it is writing, collects the inline fields in a
list, sorts them by alignment and places them. For one table most of that is fixed: the order
the inline fields are placed in (by alignment, then slot), their sizes, which are offsets and to
which kind of child. :func:`compile_writers` makes those decisions once per schema and writes one
function per table that only looks at which fields the object has; it builds the same bytes as
the reference (a test holds the two to it). The generated source can be printed with
:func:`writer_source`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from libkiki.flatbuf.layout import I32, U32
from libkiki.flatbuf.schema import (
    BOOL,
    STRING,
    STRUCT,
    TABLE,
    UNION,
    UTYPE,
    VEC_ENUM,
    VEC_SCALAR,
    VEC_STRING,
    VEC_TABLE,
    Schema,
    Step,
    TableDef,
)

if TYPE_CHECKING:
    from libkiki.flatbuf.writer import Chunk, Writer

TableWriter = Callable[["Writer", Sequence[Any]], "Chunk"]


def _size_align(step: Step) -> tuple[int, int]:
    """The inline size and alignment of a field as the reference writer places it."""
    if step.kind <= BOOL or step.kind == UTYPE:
        return step.size, step.size if step.kind != UTYPE else 1
    if step.kind == STRUCT:
        return step.size, step.align
    return 4, 4  # an offset


def _fast_elements(schema: Schema, ref: str) -> bool:
    """Whether a vector's elements of table ``ref``'s bound class may skip the encoder lookup
    (the class encodes to that very table)."""
    desc = schema.tables[ref]
    cls = desc.cls
    return cls is not None and schema.encoder_for(cls)[0] is desc


def _writer_lines(schema: Schema, desc: TableDef) -> list[str]:
    name = desc.name
    plan = schema.plan(desc)
    values: list[str | None] = []  # the local holding each field's value (union types: none)
    for i, step in enumerate(plan):
        values.append(None if step.kind == UTYPE else f"x{i}")
    lines = [f"def write_{name}(w, values):"]
    if any(values):
        lines.append(f"    {''.join(v + ', ' for v in values if v)}= values")
    lines.append("    top = -1")
    present: list[str] = []  # per slot: the condition that it was written
    for i, step in enumerate(plan):
        kind = step.kind
        x = values[i]
        if kind == UTYPE:
            member = values[i + 1]
            lines += [
                f"    u{i} = {member} is not None",
                f"    if u{i}:",
                f"        t{i} = utype_of({member}, MEMBERS_{name}_{i + 1})",
                f"        top = {i}",
            ]
            present.append(f"u{i}")
        elif kind <= BOOL:
            if step.required:
                lines.append(f"    p{i} = True")
            else:
                lines.append(f"    p{i} = {x} != DEFAULT_{name}_{i}")
            lines += [f"    if p{i}:", f"        top = {i}"]
            present.append(f"p{i}")
        elif kind == STRUCT:
            lines += [f"    p{i} = {x} is not None", f"    if p{i}:", f"        top = {i}"]
            present.append(f"p{i}")
        else:
            # The child as (data, entry): d{i} is None when the field is not written.
            empty = f"    if not {x}:" if kind != STRING or not step.required else None
            if empty:
                lines += [empty, f"        d{i} = None"]
            first = "elif" if empty else "if"
            if kind == STRING:
                lines += [
                    f"    {first} type({x}) is str:",
                    f"        r = {x}.encode()",
                    "        k = len(r)",
                    f"        d{i} = U32_BYTES(k) + r + STRING_TAIL[k & 7]",
                    f"        e{i} = 0",
                ]
                first = "elif"
            elif kind in (VEC_SCALAR, VEC_ENUM) and step.size != 8:
                lines += [
                    f"    {first} type({x}) is tuple:",
                    f"        k = len({x})",
                    f'        d{i} = pack(f"<I{{k}}{step.fmt}", k, *{x})',
                    f"        d{i} += ZEROS8[-len(d{i}) & 7]",
                    f"        e{i} = 0",
                ]
                first = "elif"
            lines += [f"    {first} isinstance({x}, Chunk):", f"        d{i}, e{i} = {x}"]
            lines.append("    else:")
            if kind == STRING:
                lines.append(f"        d{i}, e{i} = string_chunk({x})")
            elif kind in (VEC_SCALAR, VEC_ENUM):
                lines.append(f"        d{i}, e{i} = scalar_vector_chunk({step.fmt!r}, {x})")
            elif kind == VEC_STRING:
                lines.append(
                    f"        d{i}, e{i} = offset_vector_chunk([string_chunk(s) for s in {x}])"
                )
            elif kind == VEC_TABLE:
                ref = step.ref
                if _fast_elements(schema, ref):
                    element = f"W_{ref}(w, GET_{ref}(e)) if type(e) is CLS_{ref} else "
                else:
                    element = ""
                lines.append(
                    f"        d{i}, e{i} = offset_vector_chunk("
                    f"[{element}w.chunk(e, {ref!r}) for e in {x}])"
                )
            elif kind == TABLE:
                lines.append(f"        d{i}, e{i} = w.chunk({x}, {step.ref!r})")
            else:  # UNION
                lines.append(f'        d{i}, e{i} = w.chunk({x}, "")')
            lines += [f"    if d{i} is not None:", f"        top = {i}"]
            present.append(f"d{i} is not None")
    count = len(plan)
    lines += [
        "    nslots = top + 1",
        "    vt_size = 4 + 2 * nslots",
        "    t_start = (vt_size + 3) & ~3",
    ]
    # The table starts at 4 mod 8 when it has 8-byte fields, so that they land 8-aligned.
    wide = [i for i, step in enumerate(plan) if _size_align(step)[1] == 8]
    if wide:
        any_wide = " or ".join(f"({present[i]})" for i in wide)
        lines += [f"    if t_start % 8 != 4 and ({any_wide}):", "        t_start += 4"]
    lines.append("    off = 4")
    for i in range(count):
        lines.append(f"    s{i} = 0")
    # Placed by alignment, then slot (the reference's stable sort). Each field's size is a
    # multiple of its alignment and the first one starts aligned, so no padding is ever due.
    placed = sorted(range(count), key=lambda i: -_size_align(plan[i])[1])
    for i in placed:
        size, align = _size_align(plan[i])
        if size % align:
            raise ValueError(f"{name}.{plan[i].name}: a size not a multiple of its alignment")
        lines += [f"    if {present[i]}:", f"        s{i} = off", f"        off += {size}"]
    lines += [
        "    end = t_start + off",
        "    body_end = end + (-end & 7)",
        "    buf = bytearray(body_end)",
        "    VT_PACK[nslots](buf, 0, vt_size, off, "
        f"*({''.join(f's{i}, ' for i in range(count))})[:nslots])",
        "    I32_PACK(buf, t_start, t_start)",
        "    parts = [buf]",
        "    pos = body_end",
    ]
    for i, step in enumerate(plan):
        kind = step.kind
        x = values[i]
        at = f"t_start + s{i}"
        if kind == UTYPE:
            lines += [f"    if u{i}:", f"        PACK_{name}_{i}(buf, {at}, t{i})"]
        elif kind <= BOOL:
            value = f"int({x})" if kind == BOOL else x
            lines += [f"    if p{i}:", f"        PACK_{name}_{i}(buf, {at}, {value})"]
        elif kind == STRUCT:
            lines += [f"    if p{i}:", f"        PACK_{name}_{i}(buf, {at}, *{x})"]
        else:
            lines += [
                f"    if d{i} is not None:",
                f"        U32_PACK(buf, {at}, pos + e{i} - ({at}))",
                f"        pos += len(d{i})",
                f"        parts.append(d{i})",
            ]
    lines += [
        "    if len(parts) > 1:",
        '        return Chunk(b"".join(parts), t_start)',
        "    return Chunk(bytes(buf), t_start)",
    ]
    return lines


def writer_source(schema: Schema) -> str:
    return "\n\n".join("\n".join(_writer_lines(schema, d)) for d in schema.tables.values())


def compile_writers(schema: Schema) -> dict[str, TableWriter]:
    # Imported here: the writer module imports this one to dispatch to these functions.
    from libkiki.flatbuf.layout import VT_FORMATS
    from libkiki.flatbuf.writer import (
        Chunk,
        offset_vector_chunk,
        scalar_vector_chunk,
        string_chunk,
    )

    def utype_of(member: Any, members: tuple[TableDef, ...]) -> int:
        return members.index(schema.encoder_of(member)[0]) + 1

    ns: dict[str, Any] = {
        "Chunk": Chunk,
        "string_chunk": string_chunk,
        "scalar_vector_chunk": scalar_vector_chunk,
        "offset_vector_chunk": offset_vector_chunk,
        "utype_of": utype_of,
        "U32_PACK": U32.pack_into,
        "U32_BYTES": U32.pack,
        "pack": struct.pack,
        "ZEROS8": [b"\0" * k for k in range(8)],
        # What follows a string of k bytes (k mod 8): its NUL, then zeros to a multiple of 8.
        "STRING_TAIL": [b"\0" * (1 + (-(5 + k) & 7)) for k in range(8)],
        "I32_PACK": I32.pack_into,
        # A vtable: its size, the table's size, then each slot.
        "VT_PACK": [struct.Struct(f"<HH{n}H").pack_into for n in range(len(VT_FORMATS))],
    }
    for desc in schema.tables.values():
        plan = schema.plan(desc)
        for i, step in enumerate(plan):
            ns[f"DEFAULT_{desc.name}_{i}"] = step.default
            ns[f"PACK_{desc.name}_{i}"] = step.pack
            if step.kind == UNION:
                ns[f"MEMBERS_{desc.name}_{i}"] = step.members
        if desc.cls is not None and _fast_elements(schema, desc.name):
            ns[f"CLS_{desc.name}"] = desc.cls
            ns[f"GET_{desc.name}"] = schema.encoder_for(desc.cls)[1]
    code = compile(writer_source(schema), f"<writers of {schema.root}>", "exec")
    exec(code, ns)
    writers: dict[str, TableWriter] = {name: ns[f"write_{name}"] for name in schema.tables}
    for name, write in writers.items():
        ns[f"W_{name}"] = write
    return writers
