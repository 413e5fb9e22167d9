"""The framing cores, byte by byte, without an event loop."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libkiki.errors import FrameTooLarge, ProtocolError
from libkiki.framing import (
    FrameDecoder,
    LineDecoder,
    Oversized,
    encode_frame,
    encode_line,
)

pytestmark = pytest.mark.unit


def feed_all(decoder: LineDecoder | FrameDecoder, chunks: list[bytes]) -> list[bytes | Oversized]:
    out: list[bytes | Oversized] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


def test_lines_split_across_reads() -> None:
    d = LineDecoder(max_line=100)
    assert feed_all(d, [b'{"a"', b':1}\n{"b":2}\r', b"\n", b"partial"]) == [b'{"a":1}', b'{"b":2}']
    assert d.pending == len(b"partial")


def test_oversized_line_is_skipped_and_the_next_line_survives() -> None:
    d = LineDecoder(max_line=10)
    out = feed_all(d, [b"x" * 8, b"y" * 8, b"z" * 30, b"\nok\n"])
    assert len(out) == 2
    assert isinstance(out[0], Oversized)
    assert isinstance(out[0].error, FrameTooLarge)
    assert out[0].error.size == 46
    assert out[0].error.limit == 10
    assert out[1] == b"ok"
    assert d.pending == 0


def test_oversized_line_within_one_read() -> None:
    d = LineDecoder(max_line=4)
    out = feed_all(d, [b"12345\n1234\n"])
    assert isinstance(out[0], Oversized)
    assert out[1] == b"1234"


def test_decoder_memory_is_bounded() -> None:
    d = LineDecoder(max_line=1000)
    for _ in range(100):
        list(d.feed(b"a" * 999))
    assert len(d._buf) <= 1000


def test_encode_line_rejects_embedded_newline() -> None:
    assert encode_line(b"{}") == b"{}\n"
    with pytest.raises(ValueError, match="newline"):
        encode_line(b"{\n}")


@given(st.lists(st.binary(max_size=40), max_size=20), st.integers(1, 64))
def test_lines_roundtrip_any_chunking(lines: list[bytes], cut: int) -> None:
    lines = [line.replace(b"\n", b"").replace(b"\r", b"") for line in lines]
    stream = b"".join(line + b"\n" for line in lines)
    d = LineDecoder(max_line=64)
    got = feed_all(d, [stream[i : i + cut] for i in range(0, len(stream), cut)])
    assert got == lines


def test_frames_roundtrip_split_and_coalesced() -> None:
    d = FrameDecoder(max_frame=100)
    stream = encode_frame(b"one") + encode_frame(b"") + encode_frame(b"three")
    assert feed_all(d, [stream[:2], stream[2:9], stream[9:]]) == [b"one", b"", b"three"]
    assert d.pending == 0


def test_oversized_frame_fails_the_connection() -> None:
    d = FrameDecoder(max_frame=8)
    out = feed_all(d, [struct.pack("<I", 9) + b"x" * 9])
    assert len(out) == 1
    assert isinstance(out[0], Oversized)
    assert isinstance(out[0].error, FrameTooLarge)
    with pytest.raises(ProtocolError):
        list(d.feed(encode_frame(b"ok")))


def test_encode_frame_enforces_limit() -> None:
    with pytest.raises(FrameTooLarge):
        encode_frame(b"x" * 9, max_frame=8)


@given(st.lists(st.binary(max_size=50), max_size=10), st.integers(1, 17))
def test_frames_roundtrip_any_chunking(frames: list[bytes], cut: int) -> None:
    stream = b"".join(encode_frame(f) for f in frames)
    d = FrameDecoder(max_frame=64)
    assert feed_all(d, [stream[i : i + cut] for i in range(0, len(stream), cut)]) == frames
