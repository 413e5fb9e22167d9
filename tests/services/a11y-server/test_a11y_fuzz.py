"""Randomly corrupted frames against one live server; none crashes it or corrupts it.

Each example connects as an app, publishes a valid tree, then sends one mutated frame and a
GetInfo as a marker. The same frame is decoded here with the server's limits: a frame we refuse
must get ``InvalidFrame`` (-32600) back; a frame we accept must be acknowledged exactly when the
update rules accept it, and the server's copy of the tree must then equal the one built here
from the decoded update -- nothing half-read, nothing garbled. The server lives on through all
of them, and ends with no trees once every app has gone.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiki_a11y_server.protocol import server_limits
from kiki_a11y_server.tree import Tree
from kikitest.a11y_fixtures import R, form_tree
from libkiki.a11y import wire
from libkiki.errors import InvalidFrame, InvalidParams
from libkiki.framing import FrameDecoder, encode_frame

pytestmark = pytest.mark.integration

N = wire.Node
MARK = 0xFFFF_FF00
LIMITS = server_limits(100_000)

SEEDS: list[wire.Message] = [
    wire.TreeUpdate(7, nodes=(N(3, R["textField"], "Title", value="changed"),)),
    wire.TreeUpdate(7, nodes=(N(4, R["generic"], children=(5,)), N(5, R["button"], "Save"))),
    wire.TreeUpdate(
        7,
        node_id_to_clear=2,
        nodes=(N(2, R["form"], children=(3, 5)), N(3, R["label"]), N(5, R["button"], "Moved")),
    ),
    wire.TreeUpdate(7, root_id=10, nodes=(N(10, R["window"], children=(11,)), N(11))),
    wire.Query(7, role=R["button"], name="sa"),
    wire.Subscribe(7, apps=("nobody",)),
    wire.ActionRequest(7, 1, 5, wire.ACTIONS["press"]),
]


def exchange(sock: socket.socket, decoder: FrameDecoder, data: bytes) -> list[wire.Message]:
    """Send ``data`` then the marker; every message received up to the marker's answer."""
    sock.sendall(data + encode_frame(wire.encode(wire.GetInfo(MARK))))
    out: list[wire.Message] = []
    while True:
        chunk = sock.recv(1 << 16)
        assert chunk, "the server closed the connection"
        for frame in list(decoder.feed(chunk)):  # (the decoder trims once fully iterated)
            assert isinstance(frame, bytes)
            message = wire.decode(frame)
            if isinstance(message, wire.Info) and message.request_id == MARK:
                return out
            out.append(message)


def server_tree(sock: socket.socket, decoder: FrameDecoder, tree_id: int) -> dict[int, wire.Node]:
    subscribe = encode_frame(wire.encode(wire.Subscribe(MARK - 1, tree_id=tree_id)))
    (snapshot,) = [m for m in exchange(sock, decoder, subscribe) if isinstance(m, wire.Snapshot)]
    (tree,) = snapshot.trees
    return {n.id: n for n in tree.nodes}


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_corrupted_frames_never_harm_the_server(
    a11y_server: Callable[..., tuple[Path, subprocess.Popen[bytes]]],
    seed: wire.Message,
    flips: list[tuple[int, int]],
) -> None:
    global _server
    if _server is None or _server[1].poll() is not None:
        _server = a11y_server()
    path, proc = _server
    frame = bytearray(wire.encode(seed))
    for pos, value in flips:
        frame[pos % len(frame)] = value
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        decoder = FrameDecoder(64 << 20)
        first = exchange(
            sock,
            decoder,
            encode_frame(wire.encode(wire.TreeUpdate(1, root_id=1, nodes=tuple(form_tree())))),
        )
        (ack,) = [m for m in first if isinstance(m, wire.Ack)]
        model = Tree(ack.tree_id, wire.App(ack.tree_id))
        model.apply(wire.TreeUpdate(root_id=1, nodes=tuple(form_tree())))
        replies = exchange(sock, decoder, encode_frame(bytes(frame)))
        try:
            decoded = wire.decode(bytes(frame), LIMITS)
        except InvalidFrame:
            assert [(type(m), getattr(m, "code", 0)) for m in replies] == [(wire.Error, -32600)]
            return
        if isinstance(decoded, wire.TreeUpdate):
            try:
                model.apply(decoded)
                accepted = True
            except InvalidParams:
                accepted = False
            errors = [m for m in replies if isinstance(m, wire.Error)]
            acks = [m for m in replies if isinstance(m, wire.Ack)]
            if accepted:
                assert not errors
                assert len(acks) == (1 if decoded.request_id else 0)
            else:
                assert [e.code for e in errors] == [-32602]
                assert not acks
            assert server_tree(sock, decoder, ack.tree_id) == model.nodes
    assert proc.poll() is None


_server: tuple[Path, subprocess.Popen[bytes]] | None = None
