"""The fixed shapes of a FlatBuffer: offsets, vtable headers and slots, sizes and padding."""

from __future__ import annotations

import struct

U32 = struct.Struct("<I")  # uoffset, vector length, string length
I32 = struct.Struct("<i")  # soffset from a table to its vtable
HH = struct.Struct("<HH")  # vtable header: its size, the table's size

# A vtable's slots, for every slot count a table of ours can have.
VT_FORMATS = [struct.Struct(f"<{n}H") for n in range(0, 64)]
ZEROS = [(0,) * n for n in range(0, 64)]


def size(fmt: str) -> int:
    """Bytes of one value of the struct format ``fmt`` (little-endian, unpadded)."""
    return struct.calcsize("<" + fmt)


def pad8(n: int) -> int:
    """Bytes that bring ``n`` to a multiple of 8."""
    return -n & 7
