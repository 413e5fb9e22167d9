"""Interop: every a11y message as flatc (the FlatBuffers project's own tool) reads and writes it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from kikitest.a11y_fixtures import FLATC, MESSAGES, SCHEMA, flatc_json, message_as_flatc, normalize
from libkiki.a11y import wire

pytestmark = pytest.mark.interop


def test_flatc_decodes_every_message_as_we_do() -> None:
    for message in MESSAGES:
        doc = flatc_json(wire.encode(message))
        assert doc is not None, message
        assert normalize(doc) == normalize(message_as_flatc(message)), type(message).__name__


def test_we_decode_what_flatc_encodes(tmp_path: Path) -> None:
    for message in MESSAGES:
        (tmp_path / "m.json").write_text(json.dumps(message_as_flatc(message)))
        subprocess.run(
            [str(FLATC), "-b", "-o", str(tmp_path), str(SCHEMA), str(tmp_path / "m.json")],
            check=True,
            timeout=30,
        )
        assert wire.decode((tmp_path / "m.bin").read_bytes()) == message
