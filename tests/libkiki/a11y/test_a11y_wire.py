"""A11y messages round-trip, and corrupted buffers are refused, never half-read."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libkiki.a11y import wire
from libkiki.errors import InvalidFrame

pytestmark = pytest.mark.unit

MESSAGES: list[wire.Message] = [
    wire.Hello(1, wire.PROTOCOL_VERSION, "agent"),
    wire.GetInfo(2),
    wire.Info(3, "a11y-server", "0.1.0", 42, 1234, "ok", (("requests", 5), ("errors", 0))),
    wire.Error(4, -32600, "bad frame"),
]


@pytest.mark.parametrize("message", MESSAGES)
def test_roundtrip(message: wire.Message) -> None:
    assert wire.decode(wire.encode(message)) == message


def test_identifier_is_checked() -> None:
    frame = bytearray(wire.encode(wire.GetInfo(1)))
    frame[4:8] = b"XXXX"
    with pytest.raises(InvalidFrame, match="identifier"):
        wire.decode(bytes(frame))


def test_short_and_empty_frames() -> None:
    for frame in (b"", b"\x00" * 7):
        with pytest.raises(InvalidFrame, match="too short"):
            wire.decode(frame)


@settings(max_examples=500)
@given(
    st.sampled_from(MESSAGES),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_corruption_is_refused_or_decodes_to_a_valid_message(
    message: wire.Message, flips: list[tuple[int, int]]
) -> None:
    frame = bytearray(wire.encode(message))
    for pos, value in flips:
        frame[pos % len(frame)] = value
    try:
        decoded = wire.decode(bytes(frame))
    except InvalidFrame:
        return
    # Some flips land in padding or values (or turn the body into another member of the union);
    # what comes out must still be a whole message that encodes back to an equal one.
    assert isinstance(decoded, wire.BODIES)
    assert wire.decode(wire.encode(decoded)) == decoded
