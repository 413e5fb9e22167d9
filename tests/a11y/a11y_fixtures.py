"""Fixtures for the a11y tests (registered in tests/conftest.py)."""

from __future__ import annotations
