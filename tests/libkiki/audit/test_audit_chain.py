"""An audit line's exact bytes: the chain's hashes cover the canonical encoding, so any change
to it (key order, escaping, spacing, where the hash goes) breaks every log already written."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest

from libkiki.audit import chain_hash, encode_entry

pytestmark = pytest.mark.unit

PREV = "0" * 64
DIGEST = "dc75c497a8ea787e5e834605345f9654d3a7a438df5c8b869805daa1617cc505"
CANONICAL = (
    b'{"argsHash":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",'
    b'"caller":{"gid":1000,"identity":"uid:1000","pid":4242,"uid":1000},"code":-32602,'
    b'"durationUs":12,"outcome":"ok","prev":"' + PREV.encode() + b'",'
    b'"reason":"a \\"quoted\\" \\\\ \xe2\x9c\x93","seq":7,'
    b'"time":"2026-12-08T04:01:06.123456+00:00","tool":"org.example.player.s\xc3\xa9ek"'
)


def body() -> dict[str, Any]:
    # Keys out of order at both levels, an escape, non-ASCII text, a negative number.
    return {
        "seq": 7,
        "time": "2026-12-08T04:01:06.123456+00:00",
        "caller": {"uid": 1000, "pid": 4242, "gid": 1000, "identity": "uid:1000"},
        "tool": "org.example.player.séek",
        "outcome": "ok",
        "durationUs": 12,
        "argsHash": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        "prev": PREV,
        "code": -32602,
        "reason": 'a "quoted" \\ ✓',
    }


def test_an_entry_is_encoded_to_these_exact_bytes() -> None:
    line, digest = encode_entry(body())
    assert line == CANONICAL + b',"hash":"' + DIGEST.encode() + b'"}\n'
    assert digest == DIGEST


def test_the_hash_covers_prev_and_the_canonical_form() -> None:
    assert hashlib.sha256(PREV.encode() + CANONICAL + b"}").hexdigest() == DIGEST
    assert chain_hash(PREV, body()) == DIGEST


def test_the_line_reads_back_as_the_body_with_its_hash() -> None:
    line, digest = encode_entry(body())
    assert orjson.loads(line) == {**body(), "hash": digest}
