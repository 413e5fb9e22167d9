"""A FlatBuffers schema described for :mod:`libkiki.flatbuf`'s reader and writer.

A :class:`Schema` lists the tables (their :class:`Field` in declaration order, which is their
field id), enums, structs and unions of one ``.fbs`` file. It is written once per schema (see
``libkiki.a11y.schema``); :meth:`Schema.bind` says which Python type each table decodes to and
encodes from; :meth:`Schema.plan` prepares each field for the reader and the writer once.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from libkiki.errors import SchemaError
from libkiki.flatbuf import layout

if TYPE_CHECKING:
    from libkiki.flatbuf.reader import Reader

# Field kinds.
SCALAR, ENUM, FLAGS, BOOL, STRING, TABLE, STRUCT, UTYPE, UNION = range(9)
VEC_SCALAR, VEC_ENUM, VEC_STRING, VEC_TABLE = range(9, 13)

# A count of tables no buffer can reach (each table takes at least 4 bytes).
UNLIMITED = 1 << 62


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
        for t in tables:
            _check_unions(t)
        self.tables = {t.name: t for t in tables}
        self.enums = {e.name: e for e in enums}
        self.structs = {s.name: s for s in structs}
        self.unions = {u.name: u for u in unions}
        self.root = root
        self.file_identifier = file_identifier
        self._encoders: dict[type, tuple[TableDef, Callable[[Any], Sequence[Any]]]] = {}
        self._plans: dict[str, tuple[Step, ...]] = {}
        # The compiled readers by table name, made on first use (libkiki.flatbuf.compiled).
        self.compiled: dict[str, Callable[[Reader, int, int], Any]] = {}
        # The compiled writers by table name, made on first use (.compiled_writer).
        self.writers: dict[str, Callable[[Any, Sequence[Any]], Any]] = {}

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
            elif hasattr(cls, "_make"):
                # A named tuple: tuple.__new__ itself (the readers always pass one value per
                # field, so _make's length check has nothing to catch).
                desc.make = partial(tuple.__new__, cls)
            else:
                desc.make = lambda values: cls(*values)
            desc.cls = cls
            self.compiled.clear()  # they call desc.make
        values_of: Callable[[Any], Sequence[Any]]
        if getattr(cls, "_fields", None) == tuple(names):
            values_of = _itself  # a named tuple of exactly the table's fields, in order
        elif len(names) == 1:
            getter = operator.attrgetter(names[0])
            values_of = lambda obj: (getter(obj),)  # noqa: E731
        elif names:
            values_of = operator.attrgetter(*names)
        else:
            values_of = lambda obj: ()  # noqa: E731
        self._encoders[cls] = (desc, values_of)
        self.writers.clear()  # they know which class encodes to which table

    def allowances(self, max_count: dict[str, int]) -> list[int]:
        """How many tables of each name (in the order of :attr:`tables`) a buffer may hold:
        ``max_count``'s limit, or one no buffer can reach."""
        return [max_count.get(name, UNLIMITED) for name in self.tables]

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
        size = layout.size(fmt) if fmt else 4
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
        return self.encoder_for(type(obj))

    def encoder_for(self, cls: type) -> tuple[TableDef, Callable[[Any], Sequence[Any]]]:
        """The table ``cls`` encodes to, and how its values are taken from an instance."""
        try:
            return self._encoders[cls]
        except KeyError:
            raise TypeError(f"{cls.__name__} is not bound to a table") from None


def _check_unions(desc: TableDef) -> None:
    """Refuse a union whose type field does not come right before it: the readers take a union's
    member from the type field read just before, and the compiled writer writes the type field
    from the value of the field after it."""
    fields = desc.fields
    for i, f in enumerate(fields):
        if f.kind == UTYPE:
            after = fields[i + 1] if i + 1 < len(fields) else None
            if after is None or after.kind != UNION or after.ref != f.ref:
                raise SchemaError(
                    f"{desc.name}.{f.name}: a union type field must be followed by its union "
                    f"{f.ref}"
                )
        elif f.kind == UNION:
            before = fields[i - 1] if i else None
            if before is None or before.kind != UTYPE or before.ref != f.ref:
                raise SchemaError(
                    f"{desc.name}.{f.name}: a union must follow its type field of union {f.ref}"
                )


def _itself(obj: Any) -> Sequence[Any]:
    return obj  # type: ignore[no-any-return]
