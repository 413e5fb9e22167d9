"""The verifier-decoder: every check of the trust boundary, then the Python values.

Python's flatbuffers runtime has no verifier: on a corrupted buffer the generated accessors read
whatever the offsets point at. :class:`Reader` walks a buffer once, checking everything the C++
``flatbuffers::Verifier`` checks (every offset, vtable and vector inside the buffer and aligned,
strings NUL-terminated) and more (strings valid UTF-8, enum values declared, bit flags known,
union types in range, required fields present, table nesting depth, a count of tables per name and
a budget of bytes decoded so that shared offsets cannot amplify a small frame) while it builds
the Python values. Nothing is returned from a buffer that fails any check.

The per-table checks run as the schema's compiled readers (:mod:`libkiki.flatbuf.compiled`);
this class holds the buffer, the limits and the checks the readers share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from libkiki.errors import InvalidFrame
from libkiki.flatbuf.compiled import compile_readers
from libkiki.flatbuf.layout import U32
from libkiki.flatbuf.schema import Schema, TableDef


@dataclass(frozen=True, slots=True)
class Limits:
    max_depth: int = 16  # tables nested in tables
    max_tables: int = 1_000_000
    # Per table name, e.g. {"Node": 100_000}.
    max_count: dict[str, int] = field(default_factory=dict)
    # Bytes decoded may exceed the buffer's size only this many times (shared offsets).
    amplification: int = 4


class Reader:
    """Verifies and decodes one buffer; every failure is :class:`InvalidFrame`."""

    __slots__ = ("budget", "buf", "left", "limits", "n", "schema", "tables")

    def __init__(self, schema: Schema, buf: bytes, limits: Limits) -> None:
        self.schema = schema
        self.buf = buf
        self.n = len(buf)
        self.limits = limits
        self.tables = 0
        # How many more of each table (in the schema's order) the limits allow.
        self.left = schema.allowances(limits.max_count)
        self.budget = max(self.n, 64) * limits.amplification

    def root(self, *, check_identifier: bool = True) -> Any:
        """Verify and decode the whole buffer from its root table."""
        return self.table(
            self.schema.tables[self.schema.root], self.root_position(check_identifier), 1
        )

    def root_position(self, check_identifier: bool = True) -> int:
        """Where the root table is, after checking the buffer's size and file identifier."""
        buf = self.buf
        if self.n < 8:
            raise InvalidFrame(f"frame of {self.n} bytes is too short for a FlatBuffer")
        if check_identifier and buf[4:8] != self.schema.file_identifier:
            raise InvalidFrame(
                f"file identifier {bytes(buf[4:8])!r} is not {self.schema.file_identifier!r}"
            )
        root: int = U32.unpack_from(buf, 0)[0]
        return root

    def fail(self, what: str) -> InvalidFrame:
        return InvalidFrame(f"corrupted FlatBuffer: {what}")

    def charge(self, size: int) -> None:
        self.budget -= size
        if self.budget < 0:
            raise self.fail("decoding would use far more memory than the frame's size")

    def target(self, p: int) -> int:
        """Follow the uoffset at ``p`` (already bounds-checked) and check it lands aligned."""
        target: int = p + U32.unpack_from(self.buf, p)[0]
        if target & 3 or target + 4 > self.n:
            raise self.fail(f"offset at {p} points outside the buffer or is misaligned")
        return target

    def string(self, p: int) -> str:
        buf = self.buf
        n = self.n
        at = p + U32.unpack_from(buf, p)[0]
        if at & 3 or at + 4 > n:
            raise self.fail(f"offset at {p} points outside the buffer or is misaligned")
        length = U32.unpack_from(buf, at)[0]
        end = at + 4 + length
        if end >= n or buf[end] != 0:
            raise self.fail(f"string at {at} runs past the buffer or is not NUL-terminated")
        self.budget -= length + 8
        if self.budget < 0:
            raise self.fail("decoding would use far more memory than the frame's size")
        try:
            return buf[at + 4 : end].decode()
        except UnicodeDecodeError:
            raise self.fail(f"string at {at} is not valid UTF-8") from None

    def vector(self, p: int, elem: int) -> tuple[int, int]:
        at = self.target(p)
        (length,) = U32.unpack_from(self.buf, at)
        start = at + 4
        if start + length * elem > self.n:
            raise self.fail(f"vector at {at} of {length} elements runs past the buffer")
        if elem == 8 and start & 7:
            raise self.fail(f"vector at {at} is misaligned")
        self.charge(length * max(elem, 4) + 4)
        return start, length

    def table(self, desc: TableDef, pos: int, depth: int) -> Any:
        """Verify and decode the table at ``pos`` with the schema's compiled reader for it."""
        read = self.schema.compiled.get(desc.name)
        if read is None:
            self.schema.compiled.update(compile_readers(self.schema))
            read = self.schema.compiled[desc.name]
        return read(self, pos, depth)
