"""The edge's table of the session document's parts (edge/src/parts.js) is the device's
(libkiki.sync.parts): same roots, same writers, same add-only writers."""

from __future__ import annotations

import re

import pytest

from kikitest import REPO
from libkiki.sync.parts import PARTS

pytestmark = pytest.mark.unit


def edge_table(name: str) -> dict[str, frozenset[str]]:
    """``export const <name> = Object.freeze({root: new Set([...]), ...})`` of parts.js."""
    source = (REPO / "edge" / "src" / "parts.js").read_text()
    block = source[source.index(f"export const {name}") :]
    block = block[: block.index("});")]
    entries = re.findall(r"^\s*(\w+): new Set\(\[([^\]]*)\]\),?\s*$", block, re.MULTILINE)
    return {root: frozenset(re.findall(r'"(\w+)"', writers)) for root, writers in entries}


def test_the_edge_parts_are_the_device_parts() -> None:
    edge = edge_table("PARTS")
    assert edge, "no part found in edge/src/parts.js: its table's layout changed"
    assert edge == {part.root: part.writers for part in PARTS}


def test_the_edge_add_only_writers_are_the_device_ones() -> None:
    edge = edge_table("ADDERS")
    assert edge, "no add-only part found in edge/src/parts.js: its table's layout changed"
    assert edge == {part.root: part.adders for part in PARTS if part.adders}
