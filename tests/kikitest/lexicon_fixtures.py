"""Fixtures for the lexicon tests: registries of the external and of Kiki's own lexicons."""

from __future__ import annotations

import pytest

from kikitest.lexicon_testdata import KIKI_LEXICONS, data_path
from libkiki.lexicon import Registry


@pytest.fixture(scope="session")
def atproto() -> Registry:
    """Every published atproto lexicon plus the interop catalog."""
    registry = Registry()
    errors = registry.load_dir(data_path("atproto-lexicons"))
    errors += registry.load_dir(data_path("atproto-interop", "lexicon", "catalog"))
    assert errors == []
    return registry


@pytest.fixture(scope="session")
def kiki() -> Registry:
    registry = Registry()
    assert registry.load_dir(KIKI_LEXICONS) == []
    return registry
