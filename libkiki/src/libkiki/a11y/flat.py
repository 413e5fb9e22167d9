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


@dataclass(frozen=True, slots=True)
class Step:
    """One field, prepared for the reader: sizes, unpackers and value sets looked up once."""

    kind: int
    name: str
    ref: str
    fmt: str
    size: int
    align: int
    unpack: Callable[[bytes, int], tuple[Any, ...]] | None
    pack: Callable[..., None] | None
    known: frozenset[int]
    mask: int
    members: tuple[TableDef, ...]  # a table field's table; a union's member tables
    required: bool
    default: Any
    # Absent means "the default", nothing to check (not required, not part of a union).
    plain_default: bool


@dataclass(eq=False)
class TableDef:
    name: str
    fields: tuple[Field, ...]
    # Filled in by Schema: how values are built and read back.
    # Builds the decoded value from the list of field values (union types left out).
    make: Callable[[list[Any]], Any] = field(default=tuple)
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
        self._plans: dict[str, tuple[Step, ...]] = {}
        self._readers: dict[str, Callable[[Reader, int, int], Any]] = {}

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
            if make is not None:
                build = make
                desc.make = lambda values: build(*values)
            elif hasattr(cls, "_make"):  # a named tuple: tuple.__new__, no per-field Python
                desc.make = cls._make
            else:
                desc.make = lambda values: cls(*values)
            desc.cls = cls
            self._readers.clear()  # they call desc.make
        values_of: Callable[[Any], Sequence[Any]]
        if len(names) == 1:
            getter = operator.attrgetter(names[0])
            values_of = lambda obj: (getter(obj),)  # noqa: E731
        elif names:
            values_of = operator.attrgetter(*names)
        else:
            values_of = lambda obj: ()  # noqa: E731
        self._encoders[cls] = (desc, values_of)

    def reader(self, desc: TableDef) -> Callable[[Reader, int, int], Any]:
        read = self._readers.get(desc.name)
        if read is None:
            self._readers.update(compile_readers(self))
            read = self._readers[desc.name]
        return read

    def plan(self, desc: TableDef) -> tuple[Step, ...]:
        plan = self._plans.get(desc.name)
        if plan is None:
            plan = self._plans[desc.name] = tuple(self._step(f) for f in desc.fields)
        return plan

    def _step(self, f: Field) -> Step:
        kind = f.kind
        fmt = f.fmt
        known: frozenset[int] = frozenset()
        mask = 0
        members: tuple[TableDef, ...] = ()
        if f.ref in self.enums:
            known = frozenset(self.enums[f.ref].values.values())
            mask = self.enums[f.ref].mask
        if kind == STRUCT:
            fmt = self.structs[f.ref].fmt
        if kind in (TABLE, VEC_TABLE):
            members = (self.tables[f.ref],)
        elif kind in (UNION, UTYPE):
            members = tuple(self.tables[m] for m in self.unions[f.ref].members)
        size = _size(fmt) if fmt else 4
        align = self.structs[f.ref].align if kind == STRUCT else size
        default: Any = f.default
        if kind == STRING:
            default = ""
        elif kind >= VEC_SCALAR:
            default = ()
        elif kind in (TABLE, UNION, STRUCT):
            default = None
        packer = struct.Struct("<" + fmt) if fmt else None
        return Step(
            kind,
            f.name,
            f.ref,
            fmt,
            size,
            align,
            packer.unpack_from if packer else None,
            packer.pack_into if packer else None,
            known,
            mask,
            members,
            f.required,
            default,
            not f.required and kind not in (UTYPE, UNION),
        )

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
_ZEROS = [(0,) * n for n in range(0, 64)]


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

    def root(self, *, check_identifier: bool = True, interpret: bool = False) -> Any:
        buf = self.buf
        if self.n < 8:
            raise InvalidFrame(f"frame of {self.n} bytes is too short for a FlatBuffer")
        if check_identifier and buf[4:8] != self.schema.file_identifier:
            raise InvalidFrame(
                f"file identifier {bytes(buf[4:8])!r} is not {self.schema.file_identifier!r}"
            )
        (root,) = _U32.unpack_from(buf, 0)
        desc = self.schema.tables[self.schema.root]
        return self.interpret(desc, root, 1) if interpret else self.table(desc, root, 1)

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
        buf = self.buf
        n = self.n
        at = p + _U32.unpack_from(buf, p)[0]
        if at & 3 or at + 4 > n:
            raise self._fail(f"offset at {p} points outside the buffer or is misaligned")
        length = _U32.unpack_from(buf, at)[0]
        end = at + 4 + length
        if end >= n or buf[end] != 0:
            raise self._fail(f"string at {at} runs past the buffer or is not NUL-terminated")
        self._budget -= length + 8
        if self._budget < 0:
            raise self._fail("decoding would use far more memory than the frame's size")
        try:
            return buf[at + 4 : end].decode()
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
        """Verify and decode the table at ``pos`` (compiled code, see :func:`compile_reader`)."""
        return self.schema.reader(desc)(self, pos, depth)

    def interpret(self, desc: TableDef, pos: int, depth: int) -> Any:
        """What :meth:`table` does, interpreting the description field by field.

        The reference the compiled readers are generated from and tested against: both must
        accept and refuse the same buffers, with the same values and the same messages.
        """
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
        if self.tables > self.limits.max_tables:
            raise self._fail(f"more than {self.limits.max_tables} tables")
        name = desc.name
        if name in self.limits.max_count:
            counts = self.counts
            counts[name] += 1
            if counts[name] > (limit := self.limits.max_count[name]):
                raise InvalidFrame(f"more than {limit} {name} tables in one frame")
        self._budget -= t_size
        if self._budget < 0:
            raise self._fail("decoding would use far more memory than the frame's size")
        # Slots past the fields we know (a newer peer's additions) are not read; slots a
        # shorter vtable lacks read as 0 (absent).
        plan = self.schema.plan(desc)
        count = len(plan)
        nslots = (vt_size - 4) >> 1
        if nslots >= count:
            slots = _VT_FORMATS[count].unpack_from(buf, vt + 4)
        else:
            slots = _VT_FORMATS[nslots].unpack_from(buf, vt + 4) + _ZEROS[count - nslots]
        values: list[Any] = []
        append = values.append
        utype = 0
        for step, o in zip(plan, slots, strict=True):
            kind = step.kind
            if o == 0:
                if step.plain_default:
                    append(step.default)
                elif step.required:
                    raise InvalidFrame(f"{desc.name}.{step.name} is required")
                elif kind == UTYPE:
                    utype = 0
                elif utype:
                    raise self._fail(f"{desc.name}.{step.name}: union type without a value")
                else:
                    append(None)
                continue
            p = pos + o
            if kind <= BOOL or kind in (UTYPE, STRUCT):
                size = step.size
                if o + size > t_size or p % step.align:
                    raise self._fail(f"{desc.name}.{step.name} lies outside its table")
                unpack = step.unpack
                assert unpack is not None
                if kind == STRUCT:
                    append(unpack(buf, p))
                    continue
                v = unpack(buf, p)[0]
                if kind == ENUM:
                    if v not in step.known:
                        raise InvalidFrame(f"{desc.name}.{step.name}: {v} is not a {step.ref}")
                elif kind == FLAGS:
                    if v & ~step.mask:
                        raise InvalidFrame(
                            f"{desc.name}.{step.name}: unknown {step.ref} bits {v:#x}"
                        )
                elif kind == BOOL:
                    v = bool(v)
                elif kind == UTYPE:
                    if v > len(step.members):
                        raise InvalidFrame(f"{desc.name}.{step.name}: unknown {step.ref} type {v}")
                    utype = v
                    continue
                append(v)
                continue
            if o + 4 > t_size or p & 3:
                raise self._fail(f"{desc.name}.{step.name} lies outside its table")
            if kind == STRING:
                append(self.string(p))
            elif kind == TABLE:
                append(self.interpret(step.members[0], self._target(p), depth + 1))
            elif kind == UNION:
                if not utype:
                    append(None)
                    continue
                append(self.interpret(step.members[utype - 1], self._target(p), depth + 1))
            elif kind in (VEC_SCALAR, VEC_ENUM):
                start, length = self._vector(p, step.size)
                items = struct.unpack_from(f"<{length}{step.fmt}", buf, start)
                if kind == VEC_ENUM and not step.known.issuperset(items):
                    raise InvalidFrame(f"{desc.name}.{step.name}: a value is not a {step.ref}")
                append(items)
            elif kind == VEC_STRING:
                start, length = self._vector(p, 4)
                string = self.string
                append(tuple([string(start + 4 * k) for k in range(length)]))
            else:  # VEC_TABLE
                start, length = self._vector(p, 4)
                sub = step.members[0]
                target = self._target
                table = self.interpret
                append(tuple([table(sub, target(start + 4 * k), depth + 1) for k in range(length)]))
        return desc.make(values)


# -- compiled readers --------------------------------------------------------------------------
#
# The interpreter above spends about 40 % of its time deciding, field by field, what kind of
# field it is looking at. compile_readers() makes that decision once per schema: it writes one
# Python function per table, with the interpreter's checks (and messages) spelled out for each
# field, and exec()s them. The generated source is plain and can be printed with
# reader_source(schema).

_TABLE_HEAD = """
def read_{name}(r, pos, depth):
    buf = r.buf
    n = r.n
    limits = r.limits
    if depth > limits.max_depth:
        raise r._fail(f"tables nested deeper than {{limits.max_depth}}")
    if pos & 3 or pos < 0 or pos + 4 > n:
        raise r._fail(f"table at {{pos}} is outside the buffer or misaligned")
    vt = pos - I32(buf, pos)[0]
    if vt & 1 or vt < 0 or vt + 4 > n:
        raise r._fail(f"vtable of the table at {{pos}} is outside the buffer")
    vt_size, t_size = HH(buf, vt)
    if vt_size < 4 or vt_size & 1 or vt + vt_size > n or t_size < 4 or pos + t_size > n:
        raise r._fail(f"vtable of the table at {{pos}} has impossible sizes")
    r.tables += 1
    if r.tables > limits.max_tables:
        raise r._fail(f"more than {{limits.max_tables}} tables")
    if {name!r} in limits.max_count:
        r.counts[{name!r}] += 1
        if r.counts[{name!r}] > (limit := limits.max_count[{name!r}]):
            raise InvalidFrame(f"more than {{limit}} {name} tables in one frame")
    r._budget -= t_size
    if r._budget < 0:
        raise r._fail("decoding would use far more memory than the frame's size")
    k = (vt_size - 4) >> 1
    if k >= {count}:
        slots = VT[{count}](buf, vt + 4)
    else:
        slots = VT[k](buf, vt + 4) + ZEROS[{count} - k]
    v = list(DEFAULTS_{name})
    utype = 0
"""


def _reader_lines(desc: TableDef, plan: tuple[Step, ...]) -> list[str]:
    name = desc.name
    lines = [_TABLE_HEAD.format(name=name, count=len(plan))]
    if plan:
        lines.append(f"    {', '.join(f'o{i}' for i in range(len(plan)))}, = slots")
    j = 0  # index into the values (union type fields have none)
    for i, step in enumerate(plan):
        where = f"{name}.{step.name}"
        kind = step.kind
        body: list[str] = [f"        p = pos + o{i}"]
        outside = f'raise r._fail("{where} lies outside its table")'
        if kind <= BOOL or kind in (UTYPE, STRUCT):
            body += [
                f"        if o{i} + {step.size} > t_size or p % {step.align}:",
                f"            {outside}",
            ]
            if kind == STRUCT:
                body.append(f"        v[{j}] = UNPACK_{name}_{i}(buf, p)")
            else:
                body.append(f"        x = UNPACK_{name}_{i}(buf, p)[0]")
                if kind == ENUM:
                    body += [
                        f"        if x not in KNOWN_{name}_{i}:",
                        f'            raise InvalidFrame(f"{where}: {{x}} is not a {step.ref}")',
                    ]
                elif kind == FLAGS:
                    body += [
                        f"        if x & ~{step.mask}:",
                        "            raise InvalidFrame("
                        f'f"{where}: unknown {step.ref} bits {{x:#x}}")',
                    ]
                elif kind == BOOL:
                    body.append("        x = bool(x)")
                if kind == UTYPE:
                    body += [
                        f"        if x > {len(step.members)}:",
                        "            raise InvalidFrame("
                        f'f"{where}: unknown {step.ref} type {{x}}")',
                        "        utype = x",
                    ]
                else:
                    body.append(f"        v[{j}] = x")
        else:
            body += [f"        if o{i} + 4 > t_size or p & 3:", f"            {outside}"]
            if kind == STRING:
                body.append(f"        v[{j}] = r.string(p)")
            elif kind == TABLE:
                body.append(f"        v[{j}] = R_{step.ref}(r, r._target(p), depth + 1)")
            elif kind == UNION:
                body += [
                    "        if utype:",
                    f"            member = MEMBERS_{name}_{i}[utype - 1]",
                    f"            v[{j}] = member(r, r._target(p), depth + 1)",
                ]
            elif kind in (VEC_SCALAR, VEC_ENUM):
                body += [
                    f"        start, length = r._vector(p, {step.size})",
                    f'        x = unpack_from(f"<{{length}}{step.fmt}", buf, start)',
                ]
                if kind == VEC_ENUM:
                    body += [
                        f"        if not KNOWN_{name}_{i}.issuperset(x):",
                        f'            raise InvalidFrame("{where}: a value is not a {step.ref}")',
                    ]
                body.append(f"        v[{j}] = x")
            elif kind == VEC_STRING:
                body += [
                    "        start, length = r._vector(p, 4)",
                    "        string = r.string",
                    f"        v[{j}] = tuple([string(start + 4 * q) for q in range(length)])",
                ]
            else:  # VEC_TABLE
                body += [
                    "        start, length = r._vector(p, 4)",
                    "        target = r._target",
                    f"        read = R_{step.ref}",
                    f"        v[{j}] = tuple([read(r, target(start + 4 * q), depth + 1)"
                    " for q in range(length)])",
                ]
        lines.append(f"    if o{i}:")
        lines += body
        if step.required:
            lines += ["    else:", f'        raise InvalidFrame("{where} is required")']
        elif kind == UNION:
            lines += [
                "    elif utype:",
                f'        raise r._fail("{where}: union type without a value")',
            ]
        if kind != UTYPE:
            j += 1
    lines.append(f"    return MAKE_{name}(v)")
    return lines


def reader_source(schema: Schema) -> str:
    return "\n".join("\n".join(_reader_lines(d, schema.plan(d))) for d in schema.tables.values())


def compile_readers(schema: Schema) -> dict[str, Callable[[Reader, int, int], Any]]:
    ns: dict[str, Any] = {
        "I32": _I32.unpack_from,
        "HH": _HH.unpack_from,
        "VT": [f.unpack_from for f in _VT_FORMATS],
        "ZEROS": _ZEROS,
        "InvalidFrame": InvalidFrame,
        "unpack_from": struct.unpack_from,
    }
    for desc in schema.tables.values():
        plan = schema.plan(desc)
        ns[f"MAKE_{desc.name}"] = desc.make
        ns[f"DEFAULTS_{desc.name}"] = tuple(s.default for s in plan if s.kind != UTYPE)
        for i, step in enumerate(plan):
            ns[f"UNPACK_{desc.name}_{i}"] = step.unpack
            ns[f"KNOWN_{desc.name}_{i}"] = step.known
    code = compile(reader_source(schema), f"<readers of {schema.root}>", "exec")
    exec(code, ns)
    readers = {name: ns[f"read_{name}"] for name in schema.tables}
    for name, read in readers.items():
        ns[f"R_{name}"] = read
    for desc in schema.tables.values():
        for i, step in enumerate(schema.plan(desc)):
            if step.kind == UNION:
                ns[f"MEMBERS_{desc.name}_{i}"] = [readers[m.name] for m in step.members]
    return readers


# -- writing ---------------------------------------------------------------------------------


_ALIGN = operator.itemgetter(0)


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
        _I32.pack_into(buf, t_start, t_start)  # vtable at chunk offset 0
        child_at: dict[int, int] = {}
        pos = body_end
        for c in children:
            child_at[id(c)] = pos + c.entry
            pos += len(c.data)
        for at, pack, v in placed:
            if pack is None:
                _U32.pack_into(buf, at, child_at[id(v)] - at)
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
        return _U32.pack(8 + c.entry) + self.schema.file_identifier + c.data
