"""The writer: bound objects encoded front to back into position-independent chunks.

Every object :class:`Writer` writes is a :class:`Chunk`: bytes whose length is a multiple of 8
and which only point inside themselves, plus the offset of the object in them. A chunk can
therefore be spliced unchanged into any bigger buffer at an 8-aligned position: that is how the
a11y-server keeps one encoded chunk per node and serves snapshots and updates without
re-encoding.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

from libkiki.flatbuf import layout
from libkiki.flatbuf.compiled_writer import compile_writers
from libkiki.flatbuf.layout import I32, U32, pad8
from libkiki.flatbuf.schema import (
    BOOL,
    STRING,
    STRUCT,
    TABLE,
    UTYPE,
    VEC_ENUM,
    VEC_SCALAR,
    VEC_STRING,
    VEC_TABLE,
    Schema,
    TableDef,
)


class Chunk(NamedTuple):
    """A position-independent encoded object: ``data`` (8-aligned length), object at ``entry``."""

    data: bytes
    entry: int


_ALIGN = operator.itemgetter(0)


def string_chunk(text: str) -> Chunk:
    raw = text.encode()
    size = 4 + len(raw) + 1
    return Chunk(U32.pack(len(raw)) + raw + b"\0" * (1 + pad8(size)), 0)


def scalar_vector_chunk(fmt: str, items: Sequence[int]) -> Chunk:
    size = layout.size(fmt)
    body = struct.pack(f"<I{len(items)}{fmt}", len(items), *items)
    if size == 8:
        data = b"\0\0\0\0" + body
        return Chunk(data + b"\0" * pad8(len(data)), 4)
    return Chunk(body + b"\0" * pad8(len(body)), 0)


def offset_vector_chunk(chunks: Sequence[Chunk]) -> Chunk:
    """A vector of tables or strings from their chunks (the chunks are copied, not re-encoded)."""
    count = len(chunks)
    head = 4 + 4 * count
    head_pad = pad8(head)
    pos = head + head_pad
    offsets = []
    for k, c in enumerate(chunks):
        offsets.append(pos + c.entry - (4 + 4 * k))
        pos += len(c.data)
    return Chunk(
        b"".join(
            [
                struct.pack(f"<I{count}I", count, *offsets),
                b"\0" * head_pad,
                *(c.data for c in chunks),
            ]
        ),
        0,
    )


class Writer:
    """Encodes bound objects into position-independent chunks."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema

    def chunk(self, obj: Any, ref: str = "") -> Chunk:
        """Encode a bound object; a plain tuple is taken as the values of table ``ref``."""
        if isinstance(obj, Chunk):
            return obj
        if type(obj) is tuple and ref:
            return self.table(self.schema.tables[ref], obj)
        desc, values_of = self.schema.encoder_of(obj)
        return self.table(desc, values_of(obj))

    def table(self, desc: TableDef, values: Sequence[Any]) -> Chunk:
        """Encode the values of table ``desc`` with the schema's compiled writer for it."""
        write = self.schema.writers.get(desc.name)
        if write is None:
            self.schema.writers.update(compile_writers(self.schema))
            write = self.schema.writers[desc.name]
        chunk: Chunk = write(self, values)
        return chunk

    def reference_table(self, desc: TableDef, values: Sequence[Any]) -> Chunk:
        """What :meth:`table` builds, decided field by field: the compiled writers' reference
        (the tests hold them to the same bytes). Nested tables go through :meth:`chunk`."""
        schema = self.schema
        plan = schema.plan(desc)
        # (align, slot, size, pack_into or None for an offset, value or child chunk)
        inline: list[tuple[int, int, int, Any, Any]] = []
        children: list[Chunk] = []
        vi = 0
        max_slot = -1
        for slot, step in enumerate(plan):
            kind = step.kind
            if kind == UTYPE:
                member = values[vi]  # the union value that follows
                if member is None:
                    continue
                member_desc = schema.encoder_of(member)[0]
                utype = plan[slot + 1].members.index(member_desc) + 1
                inline.append((1, slot, 1, step.pack, utype))
                max_slot = slot
                continue
            v = values[vi]
            vi += 1
            if kind <= BOOL:
                if v == step.default and not step.required:
                    continue
                inline.append(
                    (step.size, slot, step.size, step.pack, int(v) if kind == BOOL else v)
                )
            elif kind == STRUCT:
                if v is None:
                    continue
                inline.append((step.align, slot, step.size, step.pack, tuple(v)))
            else:
                if isinstance(v, Chunk):  # pre-encoded: spliced as it is
                    c = v
                elif not v and (kind != STRING or not step.required):
                    continue  # empty strings and vectors, absent tables: not written
                elif kind == STRING:
                    c = string_chunk(v)
                elif kind in (VEC_SCALAR, VEC_ENUM):
                    c = scalar_vector_chunk(step.fmt, v)
                elif kind == VEC_STRING:
                    c = offset_vector_chunk([string_chunk(x) for x in v])
                elif kind == VEC_TABLE:
                    c = offset_vector_chunk([self.chunk(x, step.ref) for x in v])
                else:
                    c = self.chunk(v, step.ref if kind == TABLE else "")
                inline.append((4, slot, 4, None, c))
                children.append(c)
            max_slot = slot
        nslots = max_slot + 1
        vt_size = 4 + 2 * nslots
        # The table starts after the vtable, 4-aligned, and at 4 mod 8 when it has 8-byte fields
        # so that those land 8-aligned right after its soffset.
        t_start = (vt_size + 3) & ~3
        if t_start % 8 != 4 and any(e[0] == 8 for e in inline):
            t_start += 4
        inline.sort(key=_ALIGN, reverse=True)
        slots = [0] * nslots
        off = 4
        placed = []
        for align, slot, size, pack, v in inline:
            if align > 1:
                off += -(t_start + off) % align
            slots[slot] = off
            placed.append((t_start + off, pack, v))
            off += size
        end = t_start + off
        body_end = end + (-end & 7)
        buf = bytearray(body_end)
        struct.pack_into(f"<HH{nslots}H", buf, 0, vt_size, off, *slots)
        I32.pack_into(buf, t_start, t_start)  # vtable at chunk offset 0
        child_at: dict[int, int] = {}
        pos = body_end
        for c in children:
            child_at[id(c)] = pos + c.entry
            pos += len(c.data)
        for at, pack, v in placed:
            if pack is None:
                U32.pack_into(buf, at, child_at[id(v)] - at)
            elif type(v) is tuple:
                pack(buf, at, *v)
            else:
                pack(buf, at, v)
        if children:
            return Chunk(b"".join([buf, *[c.data for c in children]]), t_start)
        return Chunk(bytes(buf), t_start)

    def finish(self, root: Any) -> bytes:
        """A whole buffer: root offset, file identifier, the root table."""
        c = self.chunk(root)
        return U32.pack(8 + c.entry) + self.schema.file_identifier + c.data
