"""A real writer process over real shared memory, read concurrently and SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from libkiki.sensors.layout import Field, Layout
from libkiki.sensors.ring import RingReader
from libkiki.sensors.shm import MappedReader

pytestmark = pytest.mark.integration

CHECKED = Layout(
    "checked",
    (Field("a", "u64"), Field("b", "u64"), Field("c", "u32"), Field("d", "f64")),
)

# The writer, with the same layout and values as below (a torn record cannot pass the check).
# `stop-mid` writes 1000 records, then begins record 1000 and fills half of it and waits to be
# killed; `spin` writes as fast as it can until it is killed.
WRITER = """
import sys, time
from libkiki.sensors.layout import Field, Layout
from libkiki.sensors.shm import MappedWriter
CHECKED = Layout(
    "checked", (Field("a", "u64"), Field("b", "u64"), Field("c", "u32"), Field("d", "f64"))
)
def values(n):
    return (n, n ^ 0xFFFF_FFFF_FFFF_FFFF, (n * 2654435761) & 0xFFFF_FFFF, n / 7)
mode, name = sys.argv[1], sys.argv[2]
w = MappedWriter(name, CHECKED, 256).ring
if mode == "stop-mid":
    for n in range(1000):
        w.write(n, values(n))
    w.begin(1000)
    w.fill((1, 2, 3, 4.0))
    print("mid-write", flush=True)
    time.sleep(60)
else:
    print("writing", flush=True)
    n = 0
    while True:
        w.write(n, values(n))
        n += 1
"""


def values(n: int) -> tuple[int, int, int, float]:
    return (n, n ^ 0xFFFF_FFFF_FFFF_FFFF, (n * 2654435761) & 0xFFFF_FFFF, n / 7)


def _writer(mode: str, name: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, mode, name], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() in ("mid-write", "writing")
    return proc


def _check(ring: RingReader, position: int) -> tuple[int, int, int]:
    batch = ring.read(position)
    for sample in batch:
        assert sample.values == values(sample.index), f"torn record {sample.index}"
        assert sample.timestamp_ns == sample.index
    return batch.end, batch.count, batch.lost


def test_writer_killed_in_the_middle_of_a_record(shm_prefix: str) -> None:
    name = f"{shm_prefix}.stop-mid"
    proc = _writer("stop-mid", name)
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        mapped = MappedReader(name, CHECKED)
        try:
            ring = mapped.ring
            assert ring.write_index == 1000
            end, count, lost = _check(ring, 0)
            # The last 255 intact records (one slot is the half-written one), nothing torn.
            assert (end, count, lost) == (1000, 255, 745)
            assert _check(ring, end)[1] == 0
        finally:
            mapped.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_concurrent_reader_never_sees_a_torn_sample_and_writer_is_killed(
    shm_prefix: str,
) -> None:
    name = f"{shm_prefix}.spin"
    proc = _writer("spin", name)
    mapped = MappedReader(name, CHECKED)
    try:
        ring = mapped.ring
        position = seen = lost = 0
        # Read alongside the writer until it has lapped us many times over.
        while ring.write_index < 300_000:
            position, count, missed = _check(ring, position)
            seen += count
            lost += missed
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        final = ring.write_index
        position, count, missed = _check(ring, position)
        seen += count
        lost += missed
        assert position == final
        assert seen + lost == final
        assert seen > 1000  # the reader did read, concurrently, and every sample was whole
    finally:
        mapped.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    os.unlink(f"/dev/shm/{name}")
