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
from libkiki.flatbuf.layout import HH, I32, U32, VT_FORMATS, ZEROS
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
    left = r.left
    left[{index}] -= 1
    if left[{index}] < 0:
        raise InvalidFrame(f"more than {{limits.max_count[{name!r}]}} {name} tables in one frame")
    budget = r.budget - t_size
    if budget < 0:
        raise r.fail("decoding would use far more memory than the frame's size")
    k = (vt_size - 4) >> 1
    if k >= {count}:
        slots = VT[{count}](buf, vt + 4)
    else:
        slots = VT[k](buf, vt + 4) + ZEROS[{count} - k]
"""

# The budget is kept in a local while a table is read and handed back to the reader before a
# nested table (which charges it too) and at the end.
_SYNC_OUT = "r.budget = budget"
_SYNC_IN = "budget = r.budget"
_OVER_BUDGET = 'raise r.fail("decoding would use far more memory than the frame\'s size")'


def _target(into: str, at: str, pad: str) -> list[str]:
    """Reader.target inlined: the uoffset at ``at`` followed and checked."""
    return [
        f"{pad}{into} = {at} + U32(buf, {at})[0]",
        f"{pad}if {into} & 3 or {into} + 4 > n:",
        f'{pad}    raise r.fail(f"offset at {{{at}}} points outside the buffer or is misaligned")',
    ]


def _string(into: str, at: str, pad: str) -> list[str]:
    """Reader.string inlined, charging the local budget."""
    return [
        *_target("s", at, pad),
        f"{pad}length = U32(buf, s)[0]",
        f"{pad}end = s + 4 + length",
        f"{pad}if end >= n or buf[end] != 0:",
        f'{pad}    raise r.fail(f"string at {{s}} runs past the buffer or is not NUL-terminated")',
        f"{pad}budget -= length + 8",
        f"{pad}if budget < 0:",
        f"{pad}    {_OVER_BUDGET}",
        f"{pad}try:",
        f"{pad}    {into} = buf[s + 4 : end].decode()",
        f"{pad}except UnicodeDecodeError:",
        f'{pad}    raise r.fail(f"string at {{s}} is not valid UTF-8") from None',
    ]


def _vector(elem: int, pad: str) -> list[str]:
    """Reader.vector inlined: ``start`` and ``length`` of the vector whose uoffset is at p."""
    lines = [
        *_target("at", "p", pad),
        f"{pad}length = U32(buf, at)[0]",
        f"{pad}start = at + 4",
        f"{pad}if start + length * {elem} > n:",
        f'{pad}    raise r.fail(f"vector at {{at}} of {{length}} elements runs past the buffer")',
    ]
    if elem == 8:
        lines += [
            f"{pad}if start & 7:",
            f'{pad}    raise r.fail(f"vector at {{at}} is misaligned")',
        ]
    return [
        *lines,
        f"{pad}budget -= length * {max(elem, 4)} + 4",
        f"{pad}if budget < 0:",
        f"{pad}    {_OVER_BUDGET}",
    ]


def _reader_lines(desc: TableDef, plan: tuple[Step, ...], index: int) -> list[str]:
    name = desc.name
    lines = [_TABLE_HEAD.format(name=name, count=len(plan), index=index)]
    if plan:
        lines.append(f"    {', '.join(f'o{i}' for i in range(len(plan)))}, = slots")
    if any(step.kind == UNION for step in plan):
        lines.append("    utype = 0")
    values: list[str] = []  # the local holding each value (union type fields have none)
    for i, step in enumerate(plan):
        if step.kind != UTYPE:
            values.append(f"f{i}")
            lines.append(f"    f{i} = DEFAULT_{name}_{i}")
    pad = " " * 8
    for i, step in enumerate(plan):
        where = f"{name}.{step.name}"
        kind = step.kind
        into = f"f{i}"
        body: list[str] = [f"{pad}p = pos + o{i}"]
        outside = f'raise r.fail("{where} lies outside its table")'
        if kind <= BOOL or kind in (UTYPE, STRUCT):
            body += [
                f"{pad}if o{i} + {step.size} > t_size or p % {step.align}:",
                f"{pad}    {outside}",
            ]
            if kind == STRUCT:
                body.append(f"{pad}{into} = UNPACK_{name}_{i}(buf, p)")
            else:
                body.append(f"{pad}x = UNPACK_{name}_{i}(buf, p)[0]")
                if kind == ENUM:
                    body += [
                        f"{pad}if x not in KNOWN_{name}_{i}:",
                        f'{pad}    raise InvalidFrame(f"{where}: {{x}} is not a {step.ref}")',
                    ]
                elif kind == FLAGS:
                    body += [
                        f"{pad}if x & ~{step.mask}:",
                        f"{pad}    raise InvalidFrame("
                        f'f"{where}: unknown {step.ref} bits {{x:#x}}")',
                    ]
                elif kind == BOOL:
                    body.append(f"{pad}x = bool(x)")
                if kind == UTYPE:
                    body += [
                        f"{pad}if x > {len(step.members)}:",
                        f'{pad}    raise InvalidFrame(f"{where}: unknown {step.ref} type {{x}}")',
                        f"{pad}utype = x",
                    ]
                else:
                    body.append(f"{pad}{into} = x")
        else:
            body += [f"{pad}if o{i} + 4 > t_size or p & 3:", f"{pad}    {outside}"]
            if kind == STRING:
                body += _string(into, "p", pad)
            elif kind == TABLE:
                body += [
                    *_target("at", "p", pad),
                    f"{pad}{_SYNC_OUT}",
                    f"{pad}{into} = R_{step.ref}(r, at, depth + 1)",
                    f"{pad}{_SYNC_IN}",
                ]
            elif kind == UNION:
                body += [
                    f"{pad}if utype:",
                    *_target("at", "p", pad + "    "),
                    f"{pad}    {_SYNC_OUT}",
                    f"{pad}    {into} = MEMBERS_{name}_{i}[utype - 1](r, at, depth + 1)",
                    f"{pad}    {_SYNC_IN}",
                ]
            elif kind in (VEC_SCALAR, VEC_ENUM):
                body += _vector(step.size, pad)
                body.append(f'{pad}x = unpack_from(f"<{{length}}{step.fmt}", buf, start)')
                if kind == VEC_ENUM:
                    body += [
                        f"{pad}if not KNOWN_{name}_{i}.issuperset(x):",
                        f'{pad}    raise InvalidFrame("{where}: a value is not a {step.ref}")',
                    ]
                body.append(f"{pad}{into} = x")
            elif kind == VEC_STRING:
                body += _vector(4, pad)
                body += [
                    f"{pad}items = []",
                    f"{pad}for q in range(start, start + 4 * length, 4):",
                    *_string("x", "q", pad + "    "),
                    f"{pad}    items.append(x)",
                    f"{pad}{into} = tuple(items)",
                ]
            else:  # VEC_TABLE
                body += _vector(4, pad)
                body += [
                    f"{pad}{_SYNC_OUT}",
                    f"{pad}read = R_{step.ref}",
                    f"{pad}items = []",
                    f"{pad}append = items.append",
                    f"{pad}for q in range(start, start + 4 * length, 4):",
                    *_target("at", "q", pad + "    "),
                    f"{pad}    append(read(r, at, depth + 1))",
                    f"{pad}{into} = tuple(items)",
                    f"{pad}{_SYNC_IN}",
                ]
        lines.append(f"    if o{i}:")
        lines += body
        if step.required:
            lines += ["    else:", f'        raise InvalidFrame("{where} is required")']
        elif kind == UTYPE:
            # An absent type field means "no member" for the union that follows it.
            lines += ["    else:", "        utype = 0"]
        elif kind == UNION:
            lines += [
                "    elif utype:",
                f'        raise r.fail("{where}: union type without a value")',
            ]
    lines.append(f"    {_SYNC_OUT}")
    lines.append(f"    return MAKE_{name}(({''.join(v + ', ' for v in values)}))")
    return lines


def reader_source(schema: Schema) -> str:
    return "\n".join(
        "\n".join(_reader_lines(d, schema.plan(d), i)) for i, d in enumerate(schema.tables.values())
    )


def compile_readers(schema: Schema) -> dict[str, Callable[[Reader, int, int], Any]]:
    ns: dict[str, Any] = {
        "U32": U32.unpack_from,
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
        for i, step in enumerate(plan):
            ns[f"DEFAULT_{desc.name}_{i}"] = step.default
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
