"""kiki-tool-broker: Agent tool calls as JSON-RPC 2.0 over tools.sock."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kiki-tool-broker")
except PackageNotFoundError:
    __version__ = "0.0.0"
