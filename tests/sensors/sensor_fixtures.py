"""Fixtures for the sensor tests (registered in tests/conftest.py)."""

from __future__ import annotations
