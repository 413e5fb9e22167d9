"""The ring format and the layouts, with no sockets and no shared memory."""

from __future__ import annotations

import struct
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kikitest import REPO
from libkiki.errors import InvalidFrame, InvalidParams, SchemaError
from libkiki.sensors.layout import BUILTIN, IMU6, MEMORY, Field, Layout
from libkiki.sensors.ring import (
    HEADER_SIZE,
    MAGIC,
    RingChanged,
    RingReader,
    RingWriter,
    read_header,
    record_size,
    segment_size,
)

pytestmark = pytest.mark.unit

# Every field is derived from the index, so a torn record (fields of two writes) shows.
CHECKED = Layout(
    "checked",
    (Field("a", "u64"), Field("b", "u64"), Field("c", "u32"), Field("d", "f64")),
)


def values(n: int) -> tuple[int, int, int, float]:
    return (n, n ^ 0xFFFF_FFFF_FFFF_FFFF, (n * 2654435761) & 0xFFFF_FFFF, n / 7)


def ring(capacity: int = 8, layout: Layout = CHECKED) -> tuple[bytearray, RingWriter]:
    buf = bytearray(segment_size(layout, capacity))
    return buf, RingWriter(buf, layout, capacity, generation=42, pid=7, created_ns=1)


def test_header_and_sizes() -> None:
    buf, w = ring(16)
    h = read_header(buf)
    assert buf[:8] == MAGIC
    assert (h.version, h.capacity, h.generation, h.writer_pid, h.write_index) == (1, 16, 42, 7, 0)
    assert h.layout_hash == CHECKED.hash
    assert h.record_size == record_size(CHECKED) == 48  # 16 + 28, padded to 8
    assert len(buf) == HEADER_SIZE + 16 * 48
    w.write(5, values(0))
    assert read_header(buf).write_index == 1


def test_write_then_read_in_order() -> None:
    buf, w = ring(8)
    r = RingReader(buf, CHECKED)
    for n in range(5):
        assert w.write(1000 + n, values(n)) == n
    batch = r.read(0)
    assert (batch.start, batch.count, batch.lost, batch.end) == (0, 5, 0, 5)
    assert [s.index for s in batch] == [0, 1, 2, 3, 4]
    assert batch.timestamps() == [1000, 1001, 1002, 1003, 1004]
    assert batch.rows() == [values(n) for n in range(5)]
    assert len(r.read(5)) == 0
    assert r.read(2, max_count=2).rows() == [values(2), values(3)]


def test_a_reader_more_than_a_ring_behind_learns_how_many_it_lost() -> None:
    buf, w = ring(8)
    r = RingReader(buf, CHECKED)
    for n in range(21):
        w.write(n, values(n))
    batch = r.read(0)
    # The oldest intact record is 21 - 8 + 1 = 14 (slot of 13 may be rewritten next).
    assert batch.lost == 14
    assert batch.start == 14
    assert [s.values for s in batch] == [values(n) for n in range(14, 21)]
    assert r.read(batch.end).count == 0


def test_wrapped_range_is_copied_in_two_parts() -> None:
    buf, w = ring(8)
    r = RingReader(buf, CHECKED)
    for n in range(6):
        w.write(n, values(n))
    assert r.read(0).count == 6
    for n in range(6, 12):
        w.write(n, values(n))
    batch = r.read(6)
    assert (batch.start, batch.count, batch.lost) == (6, 6, 0)
    assert batch.rows() == [values(n) for n in range(6, 12)]


def test_write_many_is_the_same_as_writes() -> None:
    buf1, w1 = ring(8)
    buf2, w2 = ring(8)
    for n in range(11):
        w1.write(n * 10, values(n))
    assert w2.write_many([n * 10 for n in range(11)], [values(n) for n in range(11)]) == 11
    assert buf1 == buf2


def test_latest() -> None:
    buf, w = ring(8)
    r = RingReader(buf, CHECKED)
    assert r.latest().count == 0
    for n in range(30):
        w.write(n, values(n))
    assert r.latest().rows() == [values(29)]
    assert [s.index for s in r.latest(3)] == [27, 28, 29]
    assert r.latest(100).count == 7  # capacity - 1: the oldest slot is next to be rewritten


def test_writer_stopped_mid_record_never_shows_it() -> None:
    buf, w = ring(8)
    r = RingReader(buf, CHECKED)
    for n in range(3):
        w.write(n, values(n))
    w.begin(99)  # killed here: odd sequence, fields half written
    w.fill((0, 0, 0, 0.0))
    assert r.read(0).rows() == [values(n) for n in range(3)]
    assert r.write_index == 3
    w.commit()  # (a live writer finishes it)
    assert r.read(3).rows() == [(0, 0, 0, 0.0)]


def test_retired_or_replaced_ring_tells_the_reader() -> None:
    buf, w = ring(8)
    r = RingReader(buf, CHECKED)
    w.write(1, values(0))
    w.retire()
    # Records still there are still readable; once it has nothing new, the reader is told.
    assert r.read(0).count == 1
    with pytest.raises(RingChanged):
        r.read(1)
    RingWriter(buf, CHECKED, 8, generation=43)  # a new writer formats the memory again
    with pytest.raises(RingChanged):
        r.check()


def test_layout_mismatch_is_refused() -> None:
    buf, _ = ring(8, IMU6)
    with pytest.raises(SchemaError) as exc:
        RingReader(buf, MEMORY)
    assert exc.value.data["expected"] == f"{MEMORY.hash:016x}"
    assert exc.value.data["found"] == f"{IMU6.hash:016x}"
    # Same types, different names: a different layout.
    renamed = Layout("imu6", tuple(Field(f"x{i}", "f32") for i in range(6)))
    with pytest.raises(SchemaError):
        RingReader(buf, renamed)


@pytest.mark.parametrize(
    ("offset", "data", "message"),
    [
        (0, b"NOTARING", "bad magic"),
        (8, struct.pack("<H", 2), "version 2"),
        (16, struct.pack("<I", 12), "power of two"),
        (16, struct.pack("<I", 1 << 20), "does not fit"),
    ],
)
def test_broken_headers_are_refused(offset: int, data: bytes, message: str) -> None:
    buf, _ = ring(8)
    buf[offset : offset + len(data)] = data
    with pytest.raises(InvalidFrame, match=message):
        RingReader(buf, CHECKED)


def test_short_buffer_and_bad_capacity() -> None:
    with pytest.raises(InvalidFrame):
        read_header(b"KIKIRING")
    with pytest.raises(InvalidFrame):
        RingWriter(bytearray(4096), CHECKED, 6)
    with pytest.raises(InvalidFrame):
        RingWriter(bytearray(100), CHECKED, 8)


def test_a_corrupt_sequence_is_an_error_not_a_sample() -> None:
    buf, w = ring(8)
    for n in range(4):
        w.write(n, values(n))
    off = HEADER_SIZE + 2 * record_size(CHECKED)
    buf[off : off + 8] = struct.pack("<Q", 12345)  # an external writer scribbling
    with pytest.raises(InvalidFrame, match="corrupt"):
        RingReader(buf, CHECKED).read(0)


# A writer's steps (begin, fill, commit) with reads interleaved anywhere, including between
# a writer's steps and after it stops for good: every sample read is whole and in order, and
# every committed sample is either read or counted lost.
step = st.sampled_from(["begin", "fill", "commit", "read", "read1"])


@settings(max_examples=300, deadline=None)
@given(capacity=st.sampled_from([2, 4, 8]), steps=st.lists(step, max_size=120))
def test_interleavings_never_tear(capacity: int, steps: list[str]) -> None:
    buf, w = ring(capacity)
    r = RingReader(buf, CHECKED)
    phase = 0  # 0: idle, 1: begun, 2: filled
    position = seen = lost = 0
    for s in steps:
        n = w.write_index
        if s == "begin" and phase == 0:
            w.begin(n)
            phase = 1
        elif s == "fill" and phase == 1:
            w.fill(values(n))
            phase = 2
        elif s == "commit" and phase == 2:
            w.commit()
            phase = 0
        elif s.startswith("read"):
            batch = r.read(position, 1 if s == "read1" else None)
            assert batch.start == position + batch.lost
            for sample in batch:
                assert sample.values == values(sample.index)
                assert sample.timestamp_ns == sample.index
            position = batch.end
            seen += batch.count
            lost += batch.lost
    batch = r.read(position)
    seen += batch.count
    lost += batch.lost
    assert seen + lost == w.write_index


def test_layout_hash_and_json() -> None:
    assert IMU6.format == "<ffffff"
    assert IMU6.size == 24
    again = Layout.from_json(orjson.loads(orjson.dumps(IMU6.to_json())))
    assert again == IMU6
    assert again.hash == IMU6.hash
    tampered = IMU6.to_json() | {"hash": "0" * 16}
    with pytest.raises(InvalidParams, match="hash"):
        Layout.from_json(tampered)


@pytest.mark.parametrize(
    "raw",
    [
        None,
        {"name": "x"},
        {"name": "x", "fields": []},
        {"name": "x", "fields": [{"name": "a", "type": "f16"}]},
        {"name": "x", "fields": [{"name": "A b", "type": "f32"}]},
        {"name": "x", "fields": [{"name": "a", "type": "f32"}, {"name": "a", "type": "u8"}]},
        {"name": "Bad Name", "fields": [{"name": "a", "type": "f32"}]},
        {"name": "x", "fields": [{"name": "a", "type": "f32"}], "scale": 40},
        {"name": "x", "fields": [{"name": "a", "type": "f32", "unit": 5}]},
    ],
)
def test_bad_layouts_are_invalid_params(raw: object) -> None:
    with pytest.raises(InvalidParams):
        Layout.from_json(raw)


def test_published_layouts_match_the_code(tmp_path: Path) -> None:
    from libkiki.sensors.layout import main

    main(["--write", str(tmp_path)])
    published = REPO / "schemas" / "sensors"
    for layout in BUILTIN.values():
        name = f"{layout.name}.json"
        assert (published / name).read_text() == (tmp_path / name).read_text(), name


def test_a_batch_as_a_numpy_view_holds_the_same_samples() -> None:
    # numpy is optional for libkiki (a dev dependency here, to test this path): the array is a
    # view of the batch's bytes, with the ring's sequence and timestamp beside the fields.
    import numpy as np  # in the dev group: uv sync installs it, so this never skips

    buf, w = ring(16, IMU6)
    r = RingReader(buf, IMU6)
    for n in range(10):
        w.write(5000 + n, (n * 0.5, -n * 0.25, 9.81, 0.0, 1.0, float(n)))
    batch = r.read(3)
    arr = batch.array()
    assert arr.shape == (7,)
    assert np.shares_memory(arr, np.frombuffer(batch.data, dtype=np.uint8))  # no copy
    assert (
        arr["timestamp_ns"].tolist() == [s.timestamp_ns for s in batch] == list(range(5003, 5010))
    )
    assert arr["seq"].tolist() == [2 * n + 2 for n in range(3, 10)]  # complete records
    for name, column in zip(IMU6.names, zip(*batch.rows(), strict=True), strict=True):
        assert arr[name].tolist() == pytest.approx(list(column))
    assert arr["ax"][-1] == pytest.approx(4.5)
