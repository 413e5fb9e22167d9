"""Interop: every a11y message as flatc (the FlatBuffers project's own tool) reads and writes it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from kikitest.a11y_fixtures import (
    APP,
    FLATC,
    MESSAGES,
    SCHEMA,
    R,
    flatc_json,
    form_tree,
    message_as_flatc,
    normalize,
)
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


def test_flatc_with_the_schema_before_role_name_reads_a_frame_that_has_it(tmp_path: Path) -> None:
    """An old peer's own FlatBuffers code (flatc, given the schema without Node.role_name)
    reads a frame carrying it: every other field as before, the new one unseen."""
    text = SCHEMA.read_text()
    assert text.count("  role_name: string;\n") == 1
    old_schema = tmp_path / "a11y.fbs"
    old_schema.write_text(text.replace("  role_name: string;\n", ""))
    ruler = wire.Node(7, R["unknown"], "Ruler", role_name="ruler")
    message = wire.TreeUpdate(5, 7, 3, 0, 0, 1, (*form_tree(), ruler), (), 0, APP)
    frame = tmp_path / "frame.bin"
    frame.write_bytes(wire.encode(message))
    to_json = [str(FLATC), "--json", "--strict-json", "--raw-binary", "-o", str(tmp_path)]
    subprocess.run([*to_json, str(old_schema), "--", str(frame)], check=True, timeout=30)
    old = json.loads((tmp_path / "frame.json").read_text())
    new = flatc_json(wire.encode(message))
    assert new is not None
    assert new["body"]["nodes"][-1]["role_name"] == "ruler"
    del new["body"]["nodes"][-1]["role_name"]
    assert normalize(old) == normalize(new)
