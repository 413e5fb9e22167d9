"""A table-driven FlatBuffers verifier-decoder and writer, driven by a schema description.

Python's flatbuffers runtime has no verifier: on a corrupted buffer the generated accessors read
whatever the offsets point at. :class:`Reader` walks a buffer once, checking everything the C++
``flatbuffers::Verifier`` checks (every offset, vtable and vector inside the buffer and aligned,
strings NUL-terminated) and more (strings valid UTF-8, enum values declared, bit flags known,
union types in range, required fields present, table nesting depth, a count of tables per name and
a budget of bytes decoded so that shared offsets cannot amplify a small frame) while it builds
the Python values. Nothing is returned from a buffer that fails any check.

:func:`encode_table` writes front to back, and every object it writes is *position independent*:
a :class:`Chunk` (bytes whose length is a multiple of 8 and which only point inside themselves,
plus the offset of the object in them). A chunk can therefore be spliced unchanged into any
bigger buffer at an 8-aligned position: that is how the a11y-server keeps one encoded chunk per
node and serves snapshots and updates without re-encoding.

The description (:class:`Schema`) is written once per schema (``libkiki.a11y.schema``) and
checked against ``flatc --jsonschema`` by the tests.
"""

from __future__ import annotations

import operator
import struct
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from libkiki.errors import InvalidFrame

# Field kinds.
SCALAR, ENUM, FLAGS, BOOL, STRING, TABLE, STRUCT, UTYPE, UNION = range(9)
VEC_SCALAR, VEC_ENUM, VEC_STRING, VEC_TABLE = range(9, 13)

_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_HH = struct.Struct("<HH")


class Chunk(NamedTuple):
    """A position-independent encoded object: ``data`` (8-aligned length), object at ``entry``."""

    data: bytes
    entry: int


@dataclass(frozen=True, slots=True)
class EnumDef:
    name: str
    fmt: str  # struct format of the underlying type
    values: dict[str, int]
    flags: bool = False

    @property
    def mask(self) -> int:
        m = 0
        for v in self.values.values():
            m |= v
        return m


@dataclass(frozen=True, slots=True)
class StructDef:
    name: str
    fmt: str  # little-endian struct format of the whole struct
    fields: tuple[str, ...]
    align: int = 4


@dataclass(frozen=True, slots=True)
class UnionDef:
    name: str
    members: tuple[str, ...]  # table names; type value = index + 1


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    kind: int
    fmt: str = ""  # scalars, enums, vector elements: one struct format character
    ref: str = ""  # enum, struct, table or union name
    default: Any = 0
    required: bool = False


@dataclass(eq=False)
class TableDef:
    name: str
    fields: tuple[Field, ...]
    # Filled in by Schema: how values are built and read back.
    make: Callable[..., Any] = field(default=lambda *values: values)
    cls: type | None = None


def _size(fmt: str) -> int:
    return struct.calcsize("<" + fmt)


class Schema:
    def __init__(
        self,
        *,
        tables: Sequence[TableDef],
        enums: Sequence[EnumDef],
        structs: Sequence[StructDef],
        unions: Sequence[UnionDef],
        root: str,
        file_identifier: bytes,
    ) -> None:
        self.tables = {t.name: t for t in tables}
        self.enums = {e.name: e for e in enums}
        self.structs = {s.name: s for s in structs}
        self.unions = {u.name: u for u in unions}
        self.root = root
        self.file_identifier = file_identifier
        self._encoders: dict[type, tuple[TableDef, Callable[[Any], Sequence[Any]]]] = {}

    def bind(
        self,
        table: str,
        cls: type,
        *,
        make: Callable[..., Any] | None = None,
        names: Sequence[str] | None = None,
        encode_only: bool = False,
    ) -> None:
        """Decode ``table`` as ``make(*values)`` (default ``cls``; union type fields skipped) and
        encode instances of ``cls`` from their attributes ``names`` (default: the fields)."""
        desc = self.tables[table]
        if names is None:
            names = [f.name for f in desc.fields if f.kind != UTYPE]
        if not encode_only:
            desc.make = make or cls
            desc.cls = cls
        values_of: Callable[[Any], Sequence[Any]]
        if len(names) == 1:
            getter = operator.attrgetter(names[0])
            values_of = lambda obj: (getter(obj),)  # noqa: E731
        elif names:
            values_of = operator.attrgetter(*names)
        else:
            values_of = lambda obj: ()  # noqa: E731
        self._encoders[cls] = (desc, values_of)

    def encoder_of(self, obj: Any) -> tuple[TableDef, Callable[[Any], Sequence[Any]]]:
        try:
            return self._encoders[type(obj)]
        except KeyError:
            raise TypeError(f"{type(obj).__name__} is not bound to a table") from None


@dataclass(frozen=True, slots=True)
class Limits:
    max_depth: int = 16  # tables nested in tables
    max_tables: int = 1_000_000
    # Per table name, e.g. {"Node": 100_000}.
    max_count: dict[str, int] = field(default_factory=dict)
    # Bytes decoded may exceed the buffer's size only this many times (shared offsets).
    amplification: int = 4


_VT_FORMATS = [struct.Struct(f"<{n}H") for n in range(0, 64)]


class Reader:
    """Verifies and decodes one buffer; every failure is :class:`InvalidFrame`."""

    __slots__ = ("_budget", "buf", "counts", "limits", "n", "schema", "tables")

    def __init__(self, schema: Schema, buf: bytes, limits: Limits) -> None:
        self.schema = schema
        self.buf = buf
        self.n = len(buf)
        self.limits = limits
        self.tables = 0
        self.counts: Counter[str] = Counter()
        self._budget = max(self.n, 64) * limits.amplification

    def root(self, *, check_identifier: bool = True) -> Any:
        buf = self.buf
        if self.n < 8:
            raise InvalidFrame(f"frame of {self.n} bytes is too short for a FlatBuffer")
        if check_identifier and buf[4:8] != self.schema.file_identifier:
            raise InvalidFrame(
                f"file identifier {bytes(buf[4:8])!r} is not {self.schema.file_identifier!r}"
            )
        (root,) = _U32.unpack_from(buf, 0)
        return self.table(self.schema.tables[self.schema.root], root, 1)

    def _fail(self, what: str) -> InvalidFrame:
        return InvalidFrame(f"corrupted FlatBuffer: {what}")

    def _charge(self, size: int) -> None:
        self._budget -= size
        if self._budget < 0:
            raise self._fail("decoding would use far more memory than the frame's size")

    def _target(self, p: int) -> int:
        """Follow the uoffset at ``p`` (already bounds-checked) and check it lands aligned."""
        target: int = p + _U32.unpack_from(self.buf, p)[0]
        if target & 3 or target + 4 > self.n:
            raise self._fail(f"offset at {p} points outside the buffer or is misaligned")
        return target

    def string(self, p: int) -> str:
        at = self._target(p)
        (length,) = _U32.unpack_from(self.buf, at)
        end = at + 4 + length
        if end >= self.n or self.buf[end] != 0:
            raise self._fail(f"string at {at} runs past the buffer or is not NUL-terminated")
        self._charge(length + 8)
        try:
            return self.buf[at + 4 : end].decode()
        except UnicodeDecodeError:
            raise self._fail(f"string at {at} is not valid UTF-8") from None

    def _vector(self, p: int, elem: int) -> tuple[int, int]:
        at = self._target(p)
        (length,) = _U32.unpack_from(self.buf, at)
        start = at + 4
        if start + length * elem > self.n:
            raise self._fail(f"vector at {at} of {length} elements runs past the buffer")
        if elem == 8 and start & 7:
            raise self._fail(f"vector at {at} is misaligned")
        self._charge(length * max(elem, 4) + 4)
        return start, length

    def table(self, desc: TableDef, pos: int, depth: int) -> Any:
        buf = self.buf
        n = self.n
        if depth > self.limits.max_depth:
            raise self._fail(f"tables nested deeper than {self.limits.max_depth}")
        if pos & 3 or pos < 0 or pos + 4 > n:
            raise self._fail(f"table at {pos} is outside the buffer or misaligned")
        vt = pos - _I32.unpack_from(buf, pos)[0]
        if vt & 1 or vt < 0 or vt + 4 > n:
            raise self._fail(f"vtable of the table at {pos} is outside the buffer")
        vt_size, t_size = _HH.unpack_from(buf, vt)
        if vt_size < 4 or vt_size & 1 or vt + vt_size > n or t_size < 4 or pos + t_size > n:
            raise self._fail(f"vtable of the table at {pos} has impossible sizes")
        self.tables += 1
        self.counts[desc.name] += 1
        if self.tables > self.limits.max_tables:
            raise self._fail(f"more than {self.limits.max_tables} tables")
        limit = self.limits.max_count.get(desc.name)
        if limit is not None and self.counts[desc.name] > limit:
            raise InvalidFrame(f"more than {limit} {desc.name} tables in one frame")
        self._charge(t_size)
        # Slots past the fields we know (a newer peer's additions) are not read.
        nslots = min((vt_size - 4) >> 1, len(desc.fields))
        slots = _VT_FORMATS[nslots].unpack_from(buf, vt + 4)
        values: list[Any] = []
        utype = 0
        schema = self.schema
        for i, f in enumerate(desc.fields):
            o = slots[i] if i < nslots else 0
            kind = f.kind
            if o == 0:
                if f.required:
                    raise InvalidFrame(f"{desc.name}.{f.name} is required")
                if kind == UTYPE:
                    utype = 0
                elif kind in (STRING,):
                    values.append("")
                elif kind >= VEC_SCALAR:
                    values.append(())
                elif kind in (TABLE, UNION, STRUCT):
                    if kind == UNION and utype:
                        raise self._fail(f"{desc.name}.{f.name}: union type without a value")
                    values.append(None)
                else:
                    values.append(f.default)
                continue
            p = pos + o
            if kind <= BOOL or kind == UTYPE:
                size = _size(f.fmt)
                if o + size > t_size or p % size:
                    raise self._fail(f"{desc.name}.{f.name} lies outside its table")
                (v,) = struct.unpack_from("<" + f.fmt, buf, p)
                if kind == ENUM:
                    if v not in schema.enums[f.ref].values.values():
                        raise InvalidFrame(f"{desc.name}.{f.name}: {v} is not a {f.ref}")
                elif kind == FLAGS:
                    if v & ~schema.enums[f.ref].mask:
                        raise InvalidFrame(f"{desc.name}.{f.name}: unknown {f.ref} bits {v:#x}")
                elif kind == BOOL:
                    v = bool(v)
                elif kind == UTYPE:
                    if v > len(schema.unions[f.ref].members):
                        raise InvalidFrame(f"{desc.name}.{f.name}: unknown {f.ref} type {v}")
                    utype = v
                    continue
                values.append(v)
                continue
            if o + 4 > t_size or p & 3:
                raise self._fail(f"{desc.name}.{f.name} lies outside its table")
            if kind == STRING:
                values.append(self.string(p))
            elif kind == TABLE:
                values.append(self.table(schema.tables[f.ref], self._target(p), depth + 1))
            elif kind == UNION:
                if not utype:
                    values.append(None)
                    continue
                member = schema.unions[f.ref].members[utype - 1]
                values.append(self.table(schema.tables[member], self._target(p), depth + 1))
            elif kind == STRUCT:
                sd = schema.structs[f.ref]
                size = struct.calcsize("<" + sd.fmt)
                if o + size > t_size or p % sd.align:
                    raise self._fail(f"{desc.name}.{f.name} lies outside its table")
                values.append(struct.unpack_from("<" + sd.fmt, buf, p))
            elif kind in (VEC_SCALAR, VEC_ENUM):
                size = _size(f.fmt)
                start, length = self._vector(p, size)
                items = struct.unpack_from(f"<{length}{f.fmt}", buf, start)
                if kind == VEC_ENUM:
                    known = schema.enums[f.ref].values.values()
                    for v in items:
                        if v not in known:
                            raise InvalidFrame(f"{desc.name}.{f.name}: {v} is not a {f.ref}")
                values.append(items)
            elif kind == VEC_STRING:
                start, length = self._vector(p, 4)
                values.append(tuple(self.string(start + 4 * k) for k in range(length)))
            else:  # VEC_TABLE
                start, length = self._vector(p, 4)
                sub = schema.tables[f.ref]
                values.append(
                    tuple(
                        self.table(sub, self._target(start + 4 * k), depth + 1)
                        for k in range(length)
                    )
                )
        # Structs come back as tuples; a bound class may want its own struct type.
        return desc.make(*values)


# -- writing ---------------------------------------------------------------------------------


def _pad8(n: int) -> int:
    return -n & 7


def string_chunk(text: str) -> Chunk:
    raw = text.encode()
    size = 4 + len(raw) + 1
    return Chunk(_U32.pack(len(raw)) + raw + b"\0" * (1 + _pad8(size)), 0)


def scalar_vector_chunk(fmt: str, items: Sequence[int]) -> Chunk:
    size = _size(fmt)
    body = struct.pack(f"<I{len(items)}{fmt}", len(items), *items)
    if size == 8:
        data = b"\0\0\0\0" + body
        return Chunk(data + b"\0" * _pad8(len(data)), 4)
    return Chunk(body + b"\0" * _pad8(len(body)), 0)


def offset_vector_chunk(chunks: Sequence[Chunk]) -> Chunk:
    """A vector of tables or strings from their chunks (the chunks are copied, not re-encoded)."""
    count = len(chunks)
    head = 4 + 4 * count
    head_pad = _pad8(head)
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
        schema = self.schema
        inline: list[tuple[int, int, str, Any]] = []  # (align, slot, fmt, value)
        children: list[tuple[int, Chunk]] = []  # (slot, chunk)
        fields = desc.fields
        vi = 0
        max_slot = -1
        for slot, f in enumerate(fields):
            kind = f.kind
            if kind == UTYPE:
                member = values[vi]  # the union value that follows
                if member is None:
                    continue
                utype = schema.unions[fields[slot + 1].ref].members.index(
                    schema.encoder_of(member)[0].name
                )
                inline.append((1, slot, "B", utype + 1))
                max_slot = max(max_slot, slot)
                continue
            v = values[vi]
            vi += 1
            if kind <= BOOL:
                if v == f.default and not f.required:
                    continue
                size = _size(f.fmt)
                inline.append((size, slot, f.fmt, int(v) if kind == BOOL else v))
            elif kind == STRUCT:
                if v is None:
                    continue
                sd = schema.structs[f.ref]
                inline.append((sd.align, slot, sd.fmt, tuple(v)))
            else:
                if isinstance(v, Chunk):  # pre-encoded: spliced as it is
                    c = v
                elif kind == STRING:
                    if not v and not f.required:
                        continue
                    c = string_chunk(v)
                elif kind in (TABLE, UNION):
                    if v is None:
                        continue
                    c = self.chunk(v, f.ref if kind == TABLE else "")
                elif kind in (VEC_SCALAR, VEC_ENUM):
                    if not v:
                        continue
                    c = scalar_vector_chunk(f.fmt, v)
                elif kind == VEC_STRING:
                    if not v:
                        continue
                    c = offset_vector_chunk([string_chunk(s) for s in v])
                else:
                    if not v:
                        continue
                    c = offset_vector_chunk([self.chunk(x, f.ref) for x in v])
                inline.append((4, slot, "I", c))
                children.append((slot, c))
            max_slot = max(max_slot, slot)
        nslots = max_slot + 1
        vt_size = 4 + 2 * nslots
        has8 = any(a == 8 for a, *_ in inline)
        # The table starts after the vtable, 4-aligned, and at 4 mod 8 when it has 8-byte fields
        # so that those land 8-aligned right after its soffset.
        t_start = (vt_size + 3) & ~3
        if has8 and t_start % 8 != 4:
            t_start += 4
        inline.sort(key=lambda e: -e[0])
        slots = [0] * nslots
        layout: list[tuple[int, str, Any]] = []
        off = 4
        for align, slot, fmt, v in inline:
            off += -(t_start + off) % align
            slots[slot] = off
            layout.append((off, fmt, v))
            off += struct.calcsize("<" + fmt) if not isinstance(v, Chunk) else 4
        t_size = off
        end = t_start + t_size
        body_end = end + _pad8(end)
        buf = bytearray(body_end)
        struct.pack_into(f"<HH{nslots}H", buf, 0, vt_size, t_size, *slots)
        _I32.pack_into(buf, t_start, t_start)  # vtable at chunk offset 0
        pos = body_end
        child_pos: dict[int, int] = {}
        for _slot, c in children:
            child_pos[id(c)] = pos
            pos += len(c.data)
        for off, fmt, v in layout:
            at = t_start + off
            if isinstance(v, Chunk):
                _U32.pack_into(buf, at, child_pos[id(v)] + v.entry - at)
            elif isinstance(v, tuple):
                struct.pack_into("<" + fmt, buf, at, *v)
            else:
                struct.pack_into("<" + fmt, buf, at, v)
        if children:
            return Chunk(b"".join([bytes(buf), *(c.data for _, c in children)]), t_start)
        return Chunk(bytes(buf), t_start)

    def finish(self, root: Any) -> bytes:
        """A whole buffer: root offset, file identifier, the root table."""
        c = self.chunk(root)
        return _U32.pack(8 + c.entry) + self.schema.file_identifier + c.data
