"""10 000 fuzzed frames at the real broker, which still answers correctly after."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.integration

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
methods = st.sampled_from(
    [
        "tools/call",
        "tools/list",
        "initialize",
        "ping",
        "kiki/registerTools",
        "kiki/unregisterTools",
        "notifications/cancelled",
        "server/discover",
        "dev.kiki.service.getInfo",
        "nope",
    ]
) | st.text(max_size=12)
requests = st.fixed_dictionaries(
    {"jsonrpc": st.sampled_from(["2.0", "1.0", 2]), "method": methods},
    optional={
        "id": st.integers() | st.text(max_size=6) | st.none() | json_values,
        "params": json_values,
    },
)


def dumps(value: object) -> bytes:
    # The stdlib encoder, not orjson: it writes integers beyond 64 bits, which peers may send.
    return json.dumps(value).encode()


frames = st.one_of(
    st.binary(max_size=64).map(lambda b: b.replace(b"\n", b" ")),
    json_values.map(dumps),
    requests.map(dumps),
    st.lists(requests, max_size=5).map(dumps),
)

SENTINEL = b'{"jsonrpc":"2.0","id":"sentinel","method":"ping"}\n'


def exchange(path: Path, batch: list[bytes]) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(20)
        s.connect(str(path))
        s.sendall(b"".join(f + b"\n" for f in batch) + SENTINEL)
        buf = b""
        while b'"id":"sentinel"' not in buf:
            chunk = s.recv(1 << 16)
            assert chunk, "the broker closed the connection on fuzzed input"
            buf += chunk
        for line in buf.splitlines():
            reply = orjson.loads(line)  # every reply is well-formed JSON
            items = reply if isinstance(reply, list) else [reply]
            for item in items:
                assert item["jsonrpc"] == "2.0"
                assert ("result" in item) != ("error" in item)
                if "error" in item:
                    assert isinstance(item["error"]["code"], int)
                    assert "Traceback" not in item["error"]["message"]


def test_ten_thousand_fuzzed_frames(broker: tuple[Path, Any]) -> None:
    path, proc = broker

    @settings(
        max_examples=100,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.lists(frames, min_size=100, max_size=100))
    def fuzz(batch: list[bytes]) -> None:
        exchange(path, batch)

    fuzz()
    assert proc.poll() is None, "the broker died"
    # Still correct afterwards, on a fresh connection.
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(20)
        s.connect(str(path))
        s.sendall(
            b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":'
            b'{"name":"dev.kiki.service.getInfo"}}\n'
        )
        reply = orjson.loads(s.makefile("rb").readline())
    assert reply["id"] == 7
    assert reply["result"]["structuredContent"]["name"] == "tool-broker"
    assert reply["result"]["structuredContent"]["counters"]["requests"] >= 100
