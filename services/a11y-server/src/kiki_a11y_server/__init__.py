"""kiki-a11y-server: the live accessibility tree as FlatBuffers frames over a11y.sock."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kiki-a11y-server")
except PackageNotFoundError:
    __version__ = "0.0.0"
