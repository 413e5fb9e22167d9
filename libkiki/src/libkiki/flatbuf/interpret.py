"""The reference reader: what the compiled readers do, interpreting the schema field by field.

Not on any trust boundary: :class:`~libkiki.flatbuf.reader.Reader` runs the compiled readers
(:mod:`libkiki.flatbuf.compiled`), which are generated from the checks written here once, plainly.
The tests hold the two against each other: both must accept and refuse the same buffers, with
the same values and the same messages.
"""

from __future__ import annotations

import struct
from typing import Any

from libkiki.errors import InvalidFrame
from libkiki.flatbuf.layout import HH, I32, VT_FORMATS, ZEROS
from libkiki.flatbuf.reader import Limits, Reader
from libkiki.flatbuf.schema import (
    BOOL,
    ENUM,
    FLAGS,
    STRING,
    STRUCT,
    TABLE,
    UNION,
    UTYPE,
    VEC_ENUM,
    VEC_SCALAR,
    VEC_STRING,
    Schema,
    TableDef,
)


def interpret_root(
    schema: Schema, buf: bytes, limits: Limits, *, check_identifier: bool = True
) -> Any:
    """What ``Reader(schema, buf, limits).root()`` returns or raises, by interpretation."""
    r = Reader(schema, buf, limits)
    return interpret(r, schema.tables[schema.root], r.root_position(check_identifier), 1)


def interpret(r: Reader, desc: TableDef, pos: int, depth: int) -> Any:
    """Verify and decode the table at ``pos`` of ``r``'s buffer."""
    buf = r.buf
    n = r.n
    if depth > r.limits.max_depth:
        raise r.fail(f"tables nested deeper than {r.limits.max_depth}")
    if pos & 3 or pos < 0 or pos + 4 > n:
        raise r.fail(f"table at {pos} is outside the buffer or misaligned")
    vt = pos - I32.unpack_from(buf, pos)[0]
    if vt & 1 or vt < 0 or vt + 4 > n:
        raise r.fail(f"vtable of the table at {pos} is outside the buffer")
    vt_size, t_size = HH.unpack_from(buf, vt)
    if vt_size < 4 or vt_size & 1 or vt + vt_size > n or t_size < 4 or pos + t_size > n:
        raise r.fail(f"vtable of the table at {pos} has impossible sizes")
    r.tables += 1
    if r.tables > r.limits.max_tables:
        raise r.fail(f"more than {r.limits.max_tables} tables")
    name = desc.name
    index = list(r.schema.tables).index(name)
    r.left[index] -= 1
    if r.left[index] < 0:
        raise InvalidFrame(f"more than {r.limits.max_count[name]} {name} tables in one frame")
    r.budget -= t_size
    if r.budget < 0:
        raise r.fail("decoding would use far more memory than the frame's size")
    # Slots past the fields we know (a newer peer's additions) are not read; slots a
    # shorter vtable lacks read as 0 (absent).
    plan = r.schema.plan(desc)
    count = len(plan)
    nslots = (vt_size - 4) >> 1
    if nslots >= count:
        slots = VT_FORMATS[count].unpack_from(buf, vt + 4)
    else:
        slots = VT_FORMATS[nslots].unpack_from(buf, vt + 4) + ZEROS[count - nslots]
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
                raise r.fail(f"{desc.name}.{step.name}: union type without a value")
            else:
                append(None)
            continue
        p = pos + o
        if kind <= BOOL or kind in (UTYPE, STRUCT):
            size = step.size
            if o + size > t_size or p % step.align:
                raise r.fail(f"{desc.name}.{step.name} lies outside its table")
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
                    raise InvalidFrame(f"{desc.name}.{step.name}: unknown {step.ref} bits {v:#x}")
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
            raise r.fail(f"{desc.name}.{step.name} lies outside its table")
        if kind == STRING:
            append(r.string(p))
        elif kind == TABLE:
            append(interpret(r, step.members[0], r.target(p), depth + 1))
        elif kind == UNION:
            if not utype:
                append(None)
                continue
            append(interpret(r, step.members[utype - 1], r.target(p), depth + 1))
        elif kind in (VEC_SCALAR, VEC_ENUM):
            start, length = r.vector(p, step.size)
            items = struct.unpack_from(f"<{length}{step.fmt}", buf, start)
            if kind == VEC_ENUM and not step.known.issuperset(items):
                raise InvalidFrame(f"{desc.name}.{step.name}: a value is not a {step.ref}")
            append(items)
        elif kind == VEC_STRING:
            start, length = r.vector(p, 4)
            string = r.string
            append(tuple([string(start + 4 * k) for k in range(length)]))
        else:  # VEC_TABLE
            start, length = r.vector(p, 4)
            sub = step.members[0]
            target = r.target
            table = interpret
            append(tuple([table(r, sub, target(start + 4 * k), depth + 1) for k in range(length)]))
    return desc.make(values)
