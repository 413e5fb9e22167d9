"""String formats against the atproto interop syntax vectors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kikitest.lexicon_testdata import data_path
from libkiki.lexicon import formats

pytestmark = pytest.mark.unit

CHECKERS: dict[str, Callable[[str], bool]] = {
    "atidentifier": formats.is_at_identifier,
    "aturi": formats.is_at_uri,
    "cid": formats.is_cid,
    "datetime": formats.is_datetime,
    "did": formats.is_did,
    "handle": formats.is_handle,
    "language": formats.is_language,
    "nsid": formats.is_nsid,
    "recordkey": formats.is_record_key,
    "tid": formats.is_tid,
    "uri": formats.is_uri,
}


def vectors(path: Path) -> list[str]:
    # One string per line; '#' starts a comment line. Whitespace is significant (some vectors
    # are invalid only because of a leading or trailing space), so lines are not stripped.
    return [line for line in path.read_text().split("\n") if line and not line.startswith("#")]


def vector_files() -> list[Path]:
    files = sorted(data_path("atproto-interop", "syntax").glob("*.txt"))
    assert files, "no syntax vectors found"
    return files


@pytest.mark.parametrize("path", vector_files(), ids=lambda p: p.name)
def test_syntax_vectors(path: Path) -> None:
    check = CHECKERS[path.name.split("_")[0]]
    expect_valid = path.name.endswith("_valid.txt")
    lines = vectors(path)
    assert lines
    wrong = [line for line in lines if check(line) is not expect_valid]
    assert wrong == [], f"{'rejected' if expect_valid else 'accepted'}: {wrong}"


def test_every_format_has_vectors() -> None:
    names = {p.name.split("_")[0] for p in vector_files()}
    assert names == set(CHECKERS)


@pytest.mark.parametrize(
    ("text", "count"),
    [("abc", 3), ("👩‍👩‍👦‍👦", 1), ("🇩🇪🏳️‍🌈", 2), ("e\u0301", 1), ("", 0)],
)
def test_grapheme_count(text: str, count: int) -> None:
    assert formats.grapheme_count(text) == count
