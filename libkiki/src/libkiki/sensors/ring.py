"""The sensor ring, sans-I/O: a single-writer, lock-free-reader ring of fixed-size records over
any writable (writer) or readable (reader) buffer, usually a shared-memory mapping.

Format version 1 (all words little-endian; the ring is in the host's byte order and Kiki runs
on little-endian hosts only -- the magic would not match otherwise)::

    header, 64 bytes, eight 64-bit words
      0  magic        b"KIKIRING"
      8  version u16 | header size u16 | record size u32
     16  capacity u32 (a power of two) | flags u32 (bit 0: retired, the writer has moved on)
     24  layout hash u64 (see libkiki.sensors.layout)
     32  generation u64 (random, new for every segment the writer creates)
     40  write index u64 (records committed so far; record n lives in slot n % capacity)
     48  writer pid u32 | wake counter u32 (a futex word, see below; 0 in a new ring)
     56  created u64 (CLOCK_MONOTONIC ns)
    records, capacity x record size (a multiple of 8)
      0  sequence u64 (2n+1 while record n is being written, 2n+2 once it is complete)
      8  timestamp u64 (CLOCK_MONOTONIC ns)
     16  the layout's fields, packed, then zero padding to 8 bytes

The writer, for record n: sequence := 2n+1; timestamp and fields; sequence := 2n+2; write index
:= n+1. Every store is an aligned 8-byte store through a ``memoryview`` (no ``struct`` call,
which would zero the field before filling it) except the fields themselves, which the odd
sequence covers. On x86-64 stores become visible in program order and loads are not reordered
with loads, which is all this protocol needs. (CPython has no fences; on weakly ordered CPUs a
ring would need a C helper.)

A reader never takes a lock and never writes. To read records [n, W) it reads the write index
W, copies the slots in one go, then reads the write index again (W2): a record m is intact in
the copy if m > W2 - capacity, because the writer only touches slot m % capacity again after it
has published a write index of m + capacity. Records older than that were lost to the writer
lapping the reader; the reader is told how many and continues at the oldest intact one. A
writer killed mid-record leaves an odd sequence and an unchanged write index: readers never see
that record. Each copied record's sequence is also checked against its index.

The wake counter is for readers that sleep instead of waiting for a message
(:mod:`libkiki.sensors.futex`): the writer adds one to it after writes it wants to wake readers
for, and when it retires the ring, then calls ``FUTEX_WAKE`` on it. A reader reads the counter
*before* it reads the ring, and sleeps only if the counter still has that value, so a write or
a retirement after its look is never slept through. Writers that never wake anyone leave it 0;
readers of such a ring are woken by their timeout alone.
"""

from __future__ import annotations

import os
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from libkiki.errors import InvalidFrame, SchemaError
from libkiki.sensors.layout import Layout

MAGIC: Final = b"KIKIRING"
VERSION: Final = 1
HEADER_SIZE: Final = 64
PREFIX_SIZE: Final = 16  # sequence + timestamp
FLAG_RETIRED: Final = 1
MAX_CAPACITY: Final = 1 << 24

_HEADER = struct.Struct("<8sHHIIIQQQII Q")
_W_MAGIC, _W_CAP_FLAGS, _W_GENERATION, _W_INDEX, _W_PID_WAKE = 0, 2, 4, 5, 6
WAKE_OFFSET: Final = 52  # the wake counter (the high half of word 6)
_RETRIES = 8

if sys.byteorder != "little":  # pragma: no cover - Kiki targets x86-64 and aarch64
    raise ImportError("libkiki.sensors rings are little-endian; this host is not")


def record_size(layout: Layout) -> int:
    return (PREFIX_SIZE + layout.size + 7) & ~7


def segment_size(layout: Layout, capacity: int) -> int:
    return HEADER_SIZE + capacity * record_size(layout)


def check_capacity(capacity: int) -> None:
    if capacity < 2 or capacity > MAX_CAPACITY or capacity & (capacity - 1):
        raise InvalidFrame(f"ring capacity {capacity} must be a power of two in 2..{MAX_CAPACITY}")


def new_generation() -> int:
    return int.from_bytes(os.urandom(8), "little") | 1  # never 0: 0 means "not set up yet"


@dataclass(frozen=True, slots=True)
class RingHeader:
    version: int
    record_size: int
    capacity: int
    flags: int
    layout_hash: int
    generation: int
    write_index: int
    writer_pid: int
    created_ns: int

    @property
    def retired(self) -> bool:
        return bool(self.flags & FLAG_RETIRED)


def read_header(buf: Any, size: int | None = None) -> RingHeader:
    """Parse and check a ring's header; :class:`InvalidFrame` when it is not a ring (yet).

    ``size`` is the segment's size when ``buf`` holds only its first bytes (a ``pread``)."""
    with memoryview(buf) as mv:
        nbytes = mv.nbytes if size is None else size
        if nbytes < HEADER_SIZE:
            raise InvalidFrame(f"a ring is at least {HEADER_SIZE} bytes, this one {nbytes}")
        magic, version, hsize, rsize, cap, flags, lhash, gen, index, pid, _, created = (
            _HEADER.unpack_from(mv)
        )
    if magic != MAGIC:
        raise InvalidFrame("not a Kiki sensor ring (bad magic)")
    if version != VERSION:
        raise InvalidFrame(f"ring format version {version}, this reader knows {VERSION}")
    if hsize != HEADER_SIZE or rsize < PREFIX_SIZE or rsize % 8:
        raise InvalidFrame("ring header has impossible sizes")
    check_capacity(cap)
    if nbytes < HEADER_SIZE + cap * rsize:
        raise InvalidFrame(f"ring of {cap} x {rsize} bytes does not fit in {nbytes} bytes")
    return RingHeader(version, rsize, cap, flags, lhash, gen, index, pid, created)


class RingWriter:
    """The one writer of a ring. Creating it formats ``buf`` (the magic is written last)."""

    def __init__(
        self,
        buf: Any,
        layout: Layout,
        capacity: int,
        *,
        generation: int | None = None,
        pid: int = 0,
        created_ns: int | None = None,
    ) -> None:
        check_capacity(capacity)
        self.layout = layout
        self.capacity = capacity
        self.record_size = record_size(layout)
        self.generation = generation if generation is not None else new_generation()
        self._mv = memoryview(buf).cast("B")
        if self._mv.nbytes < segment_size(layout, capacity):
            raise InvalidFrame("buffer too small for the ring")
        self._u64 = self._mv[: segment_size(layout, capacity)].cast("Q")
        self._mask = capacity - 1
        self._words = self.record_size // 8
        self._pack = layout.codec.pack_into
        self._next = 0
        self._mv[: segment_size(layout, capacity)] = bytes(segment_size(layout, capacity))
        created = time.monotonic_ns() if created_ns is None else created_ns
        _HEADER.pack_into(
            self._mv,
            0,
            b"\0" * 8,
            VERSION,
            HEADER_SIZE,
            self.record_size,
            capacity,
            0,
            layout.hash,
            self.generation,
            0,
            pid,
            0,
            created,
        )
        self._mv[0:8] = MAGIC

    @property
    def write_index(self) -> int:
        return self._next

    def write(self, timestamp_ns: int, values: Sequence[Any]) -> int:
        """Append one sample; returns its index."""
        n = self._next
        w = 8 + (n & self._mask) * self._words
        u64 = self._u64
        u64[w] = 2 * n + 1
        u64[w + 1] = timestamp_ns
        self._pack(self._mv, w * 8 + PREFIX_SIZE, *values)
        u64[w] = 2 * n + 2
        self._next = u64[_W_INDEX] = n + 1
        return n

    def write_many(self, timestamps: Sequence[int], rows: Sequence[Sequence[Any]]) -> int:
        """Append several samples, publishing the write index once; returns the next index."""
        n = self._next
        u64, mask, words, pack, mv = self._u64, self._mask, self._words, self._pack, self._mv
        for ts, values in zip(timestamps, rows, strict=True):
            w = 8 + (n & mask) * words
            u64[w] = 2 * n + 1
            u64[w + 1] = ts
            pack(mv, w * 8 + PREFIX_SIZE, *values)
            u64[w] = 2 * n + 2
            n += 1
        self._next = u64[_W_INDEX] = n
        return n

    def write_raw(self, timestamp_ns: int, payload: bytes) -> int:
        """Append one sample given as the layout's packed bytes."""
        if len(payload) != self.layout.size:
            raise InvalidFrame(f"payload of {len(payload)} bytes, layout needs {self.layout.size}")
        return self.write(timestamp_ns, self.layout.codec.unpack(payload))

    # The same write in its three steps, so that tests can stop a writer between any two.
    def begin(self, timestamp_ns: int) -> None:
        n = self._next
        w = 8 + (n & self._mask) * self._words
        self._u64[w] = 2 * n + 1
        self._u64[w + 1] = timestamp_ns

    def fill(self, values: Sequence[Any]) -> None:
        w = 8 + (self._next & self._mask) * self._words
        self._pack(self._mv, w * 8 + PREFIX_SIZE, *values)

    def commit(self) -> int:
        n = self._next
        w = 8 + (n & self._mask) * self._words
        self._u64[w] = 2 * n + 2
        self._next = self._u64[_W_INDEX] = n + 1
        return n

    def bump_wake(self) -> None:
        """Add one to the wake counter (before a ``FUTEX_WAKE`` on it)."""
        _bump_wake(self._u64)

    def retire(self) -> None:
        """Tell readers this ring is finished (the writer stops or a new segment replaces it).
        The wake counter moves too, so that a reader about to sleep on it does not."""
        _retire(self._u64)

    def release(self) -> None:
        self._u64.release()
        self._mv.release()


def _bump_wake(u64: memoryview) -> None:
    u64[_W_PID_WAKE] = (u64[_W_PID_WAKE] + (1 << 32)) & 0xFFFF_FFFF_FFFF_FFFF


def _retire(u64: memoryview) -> None:
    u64[_W_CAP_FLAGS] = u64[_W_CAP_FLAGS] | (FLAG_RETIRED << 32)
    _bump_wake(u64)


def retire_ring(buf: Any) -> bool:
    """Retire whatever ring is in the writable ``buf`` whose writer is gone (a crashed run's
    segment): the retired flag, and the wake counter moved. False if ``buf`` is not a ring."""
    try:
        read_header(buf)
    except InvalidFrame:
        return False
    with memoryview(buf) as mv:
        u64 = mv[:HEADER_SIZE].cast("Q")
        try:
            _retire(u64)
        finally:
            u64.release()
    return True


@dataclass(frozen=True, slots=True)
class Sample:
    index: int
    timestamp_ns: int
    values: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Batch:
    """Consecutive records ``start .. start+count-1``, copied out of the ring (one memcpy).

    ``lost`` counts the records between the reader's position and ``start`` that the writer
    overwrote before they could be read. ``data`` holds the raw records (sequence, timestamp,
    fields, padding each), so ``numpy.frombuffer(batch.data, batch.dtype())`` is a view of it.
    """

    layout: Layout
    record_size: int
    start: int
    count: int
    lost: int
    data: memoryview

    @property
    def end(self) -> int:
        return self.start + self.count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Sample]:
        unpack = self.layout.codec.unpack_from
        ts = self.data.cast("B")
        rs = self.record_size
        for i in range(self.count):
            off = i * rs
            yield Sample(
                self.start + i,
                int.from_bytes(ts[off + 8 : off + 16], "little"),
                unpack(ts, off + PREFIX_SIZE),
            )

    def timestamps(self) -> list[int]:
        words = self.data.cast("Q")
        step = self.record_size // 8
        return [words[i * step + 1] for i in range(self.count)]

    def rows(self) -> list[tuple[Any, ...]]:
        unpack, rs = self.layout.codec.unpack_from, self.record_size
        return [unpack(self.data, i * rs + PREFIX_SIZE) for i in range(self.count)]

    def dtype(self) -> Any:
        """The numpy dtype of one record (needs numpy; libkiki does not depend on it)."""
        np = _numpy()

        kinds = {"i": "i", "u": "u", "f": "f"}
        names = ["seq", "timestamp_ns", *self.layout.names]
        formats = ["<u8", "<u8"] + [
            f"<{kinds[f.type[0]]}{int(f.type[1:]) // 8}" for f in self.layout.fields
        ]
        offsets, off = [0, 8], PREFIX_SIZE
        for f in self.layout.fields:
            offsets.append(off)
            off += int(f.type[1:]) // 8
        return np.dtype(
            {"names": names, "formats": formats, "offsets": offsets, "itemsize": self.record_size}
        )

    def array(self) -> Any:
        """The batch as a numpy structured array viewing ``data`` (no copy)."""
        np = _numpy()

        return np.frombuffer(self.data, dtype=self.dtype(), count=self.count)


def _numpy() -> Any:
    # Imported by name so that numpy stays optional (and unknown to the type checker).
    import importlib

    return importlib.import_module("numpy")


class RingChanged(Exception):
    """The ring was retired or replaced: the reader must map the sensor's segment again."""


class RingReader:
    """A reader of one ring. It checks the header (format, sizes, layout hash) once, and the
    generation and retired flag on every read."""

    def __init__(self, buf: Any, layout: Layout) -> None:
        with memoryview(buf) as view:
            header = read_header(view)
        self._setup(header, layout)
        self._mv = memoryview(buf).cast("B")
        self._u64 = self._mv[: HEADER_SIZE + self.capacity * self.record_size].cast("Q")

    def _setup(self, header: RingHeader, layout: Layout) -> None:
        if header.layout_hash != layout.hash:
            raise SchemaError(
                f"ring layout hash {header.layout_hash:016x} is not {layout.name}'s "
                f"{layout.hash:016x}",
                data={"expected": f"{layout.hash:016x}", "found": f"{header.layout_hash:016x}"},
            )
        if header.record_size != record_size(layout):
            raise SchemaError("ring record size does not match the layout")
        if header.generation == 0:
            raise InvalidFrame("ring is not set up yet")
        self.layout = layout
        self.header = header
        self.capacity = header.capacity
        self.record_size = header.record_size
        self.generation = header.generation
        self._mask = self.capacity - 1
        self._words = self.record_size // 8

    def _index(self) -> int:
        return int(self._u64[_W_INDEX])

    @property
    def write_index(self) -> int:
        return self._index()

    @property
    def retired(self) -> bool:
        return bool((self._u64[_W_CAP_FLAGS] >> 32) & FLAG_RETIRED)

    @property
    def wake_count(self) -> int:
        """The wake counter: read it before reading the ring, sleep on this value."""
        return int(self._u64[_W_PID_WAKE]) >> 32

    def check(self) -> None:
        """Raise :class:`RingChanged` if the writer retired or replaced this ring."""
        if self._u64[_W_GENERATION] != self.generation or self.retired:
            raise RingChanged()

    def read(self, position: int, max_count: int | None = None) -> Batch:
        """Records from ``position`` on (at most ``max_count``), never blocking the writer.

        An empty batch means nothing new. ``batch.end`` is where to read next.
        """
        index, cap, rs = self._index, self.capacity, self.record_size
        lost = 0
        for _ in range(_RETRIES):
            w1 = index()
            if w1 <= position:
                self.check()
                return Batch(self.layout, rs, position, 0, lost, memoryview(b""))
            if w1 - position > cap:
                lost += w1 - cap - position
                position = w1 - cap
            end = w1 if max_count is None else min(w1, position + max_count)
            data = self._copy(position, end)
            w2 = index()
            if w2 < w1:  # a different writer, or memory that is not a ring any more
                self.check()
                continue
            oldest = w2 - cap + 1
            if oldest > position:
                skip = min(oldest, end) - position
                lost += skip
                position += skip
                data = data[skip * rs :]
            count = end - position
            if count <= 0:
                continue
            self._verify(data, position, count)
            return Batch(self.layout, rs, position, count, lost, data)
        # The writer laps us on every attempt: report the loss so far and let the caller retry.
        return Batch(self.layout, rs, position, 0, lost, memoryview(b""))

    def latest(self, count: int = 1) -> Batch:
        """The newest ``count`` intact records (fewer if the ring holds fewer)."""
        w = self.write_index
        return self.read(max(0, w - min(count, self.capacity - 1)), count)

    def _bytes(self, offset: int, n: int) -> bytes:
        """A copy of ``n`` bytes of the segment at ``offset`` (how depends on the reader)."""
        return bytes(self._mv[offset : offset + n])

    def _copy(self, start: int, end: int) -> memoryview:
        rs, cap = self.record_size, self.capacity
        first = start & self._mask
        n = end - start
        base = HEADER_SIZE + first * rs
        if first + n <= cap:
            return memoryview(self._bytes(base, n * rs))
        head = (cap - first) * rs  # the records wrap: the ring's tail, then its start
        return memoryview(self._bytes(base, head) + self._bytes(HEADER_SIZE, n * rs - head))

    def _verify(self, data: memoryview, start: int, count: int) -> None:
        words = data.cast("Q")
        step = self._words
        for i in range(count):
            if words[i * step] != 2 * (start + i) + 2:
                raise InvalidFrame(
                    f"record {start + i} has sequence {words[i * step]}: the ring is corrupt"
                )

    def release(self) -> None:
        self._u64.release()
        self._mv.release()
