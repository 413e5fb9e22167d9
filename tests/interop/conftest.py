"""Interop fixtures reuse the broker fixture."""

from broker_fixtures import broker  # noqa: F401
