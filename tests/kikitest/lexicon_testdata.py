"""Where the lexicon tests find their data (imported by the test modules and conftest)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTDATA = REPO.parent / "shared" / "testdata"
KIKI_LEXICONS = REPO / "schemas" / "lexicons"


def data_path(*parts: str) -> Path:
    path = TESTDATA.joinpath(*parts)
    if not path.exists():
        pytest.fail(
            f"external test data missing: {path} (CI checks out shared/testdata beside the repo)"
        )
    return path
