"""The broker fixture for this directory."""

from broker_fixtures import broker  # noqa: F401
