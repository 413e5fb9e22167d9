"""The connection core without sockets or an event loop: framing, verification, roles."""

from __future__ import annotations

import struct

import pytest

from kiki_a11y_server.protocol import (
    PUBLISHER,
    RULES,
    SUBSCRIBER,
    A11yConnection,
    Answer,
    Request,
    Stray,
    Violation,
)
from kikitest.a11y_fixtures import form_tree
from libkiki.a11y import wire
from libkiki.framing import encode_frame

pytestmark = pytest.mark.unit


def frames(*messages: wire.Message) -> bytes:
    return b"".join(encode_frame(wire.encode(m)) for m in messages)


def error_of(event: object) -> wire.Error:
    assert isinstance(event, Violation)
    reply = wire.decode(event.reply[4:])
    assert isinstance(reply, wire.Error)
    return reply


def test_frames_split_anywhere_come_out_whole() -> None:
    conn = A11yConnection()
    data = frames(wire.Hello(1, 1, "x"), wire.TreeUpdate(2, root_id=1, nodes=tuple(form_tree())))
    events = []
    for i in range(len(data)):
        events += conn.receive_data(data[i : i + 1])
    assert [type(e) for e in events] == [Request, Request]
    assert isinstance(events[1], Request)
    assert events[1].message == wire.TreeUpdate(2, root_id=1, nodes=tuple(form_tree()))
    assert conn.eof() is None


def test_roles_decide_what_is_taken() -> None:
    conn = A11yConnection()
    (resync,) = conn.receive_data(frames(wire.Resync(3)))
    assert (error_of(resync).request_id, error_of(resync).code) == (3, -32600)
    assert "needs a subscriber" in error_of(resync).message
    conn.became(SUBSCRIBER)
    assert [type(e) for e in conn.receive_data(frames(wire.Resync(4)))] == [Request]
    # Answers: only from a publisher, only to what the server asked and still waits for.
    answer = frames(wire.ActionResult(7, "done"))
    assert [type(e) for e in conn.receive_data(answer)] == [Stray]
    conn.became(PUBLISHER)
    assert [type(e) for e in conn.receive_data(answer)] == [Stray]
    conn.expect(7)
    (ok,) = conn.receive_data(answer)
    assert isinstance(ok, Answer)
    assert ok.message == wire.ActionResult(7, "done")
    assert [type(e) for e in conn.receive_data(answer)] == [Stray], "answered once"
    conn.expect(8)
    conn.forget(8)  # timed out
    assert [type(e) for e in conn.receive_data(frames(wire.Error(8, -1, "late")))] == [Stray]
    (bad,) = conn.receive_data(frames(wire.Snapshot(9, ())))
    assert (error_of(bad).request_id, error_of(bad).code) == (9, -32601)
    assert set(RULES) <= set(wire.BODIES)


def test_bad_frame_costs_one_frame_oversized_ends_the_connection() -> None:
    conn = A11yConnection(max_frame=1024)
    events = conn.receive_data(encode_frame(b"not a flatbuffer") + frames(wire.GetInfo(2)))
    assert [type(e) for e in events] == [Violation, Request]
    assert isinstance(events[0], Violation)
    assert not events[0].fatal
    events = conn.receive_data(struct.pack("<I", 4096) + b"x" * 10 + frames(wire.GetInfo(3)))
    assert len(events) == 1
    assert isinstance(events[0], Violation)
    assert events[0].fatal
    assert "exceeds the limit of 1024" in error_of(events[0]).message
    assert conn.receive_data(frames(wire.GetInfo(4))) == []


def test_eof_inside_a_frame_is_reported() -> None:
    conn = A11yConnection()
    conn.receive_data(frames(wire.GetInfo(1))[:5])
    leftover = conn.eof()
    assert leftover is not None
    assert "inside a frame (5 bytes)" in leftover.error.message
