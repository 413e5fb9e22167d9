"""kiki-sync-relay: one live CRDT document per session over WebSockets."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kiki-sync-relay")
except PackageNotFoundError:
    __version__ = "0.0.0"
