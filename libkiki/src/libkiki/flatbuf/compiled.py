"""The schema's readers compiled: one Python function per table, the interpreter's decisions made.

The reference reader (:mod:`libkiki.flatbuf.interpret`) spends about 40 % of its time deciding,
field by field, what kind of field it is looking at. :func:`compile_readers` makes that decision
once per schema: it writes one function per table, with the reference's checks (and messages)
spelled out for each field, and exec()s them. The generated source is plain and can be printed
with :func:`reader_source`. The functions take the :class:`~libkiki.flatbuf.reader.Reader` that
holds the buffer, its limits and the checks every table shares.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from libkiki.errors import InvalidFrame
from libkiki.flatbuf.layout import HH, I32, VT_FORMATS, ZEROS
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
    Step,
    TableDef,
)

if TYPE_CHECKING:
    from libkiki.flatbuf.reader import Reader


_TABLE_HEAD = """
def read_{name}(r, pos, depth):
    buf = r.buf
    n = r.n
    limits = r.limits
    if depth > limits.max_depth:
        raise r.fail(f"tables nested deeper than {{limits.max_depth}}")
    if pos & 3 or pos < 0 or pos + 4 > n:
        raise r.fail(f"table at {{pos}} is outside the buffer or misaligned")
    vt = pos - I32(buf, pos)[0]
    if vt & 1 or vt < 0 or vt + 4 > n:
        raise r.fail(f"vtable of the table at {{pos}} is outside the buffer")
    vt_size, t_size = HH(buf, vt)
    if vt_size < 4 or vt_size & 1 or vt + vt_size > n or t_size < 4 or pos + t_size > n:
        raise r.fail(f"vtable of the table at {{pos}} has impossible sizes")
    r.tables += 1
    if r.tables > limits.max_tables:
        raise r.fail(f"more than {{limits.max_tables}} tables")
    if {name!r} in limits.max_count:
        r.counts[{name!r}] += 1
        if r.counts[{name!r}] > (limit := limits.max_count[{name!r}]):
            raise InvalidFrame(f"more than {{limit}} {name} tables in one frame")
    r.budget -= t_size
    if r.budget < 0:
        raise r.fail("decoding would use far more memory than the frame's size")
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
        outside = f'raise r.fail("{where} lies outside its table")'
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
                body.append(f"        v[{j}] = R_{step.ref}(r, r.target(p), depth + 1)")
            elif kind == UNION:
                body += [
                    "        if utype:",
                    f"            member = MEMBERS_{name}_{i}[utype - 1]",
                    f"            v[{j}] = member(r, r.target(p), depth + 1)",
                ]
            elif kind in (VEC_SCALAR, VEC_ENUM):
                body += [
                    f"        start, length = r.vector(p, {step.size})",
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
                    "        start, length = r.vector(p, 4)",
                    "        string = r.string",
                    f"        v[{j}] = tuple([string(start + 4 * q) for q in range(length)])",
                ]
            else:  # VEC_TABLE
                body += [
                    "        start, length = r.vector(p, 4)",
                    "        target = r.target",
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
                f'        raise r.fail("{where}: union type without a value")',
            ]
        if kind != UTYPE:
            j += 1
    lines.append(f"    return MAKE_{name}(v)")
    return lines


def reader_source(schema: Schema) -> str:
    return "\n".join("\n".join(_reader_lines(d, schema.plan(d))) for d in schema.tables.values())


def compile_readers(schema: Schema) -> dict[str, Callable[[Reader, int, int], Any]]:
    ns: dict[str, Any] = {
        "I32": I32.unpack_from,
        "HH": HH.unpack_from,
        "VT": [f.unpack_from for f in VT_FORMATS],
        "ZEROS": ZEROS,
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
