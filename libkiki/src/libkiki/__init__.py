"""libkiki: the thin common library every Kiki service, app and agent uses."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("libkiki")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

__all__ = ["__version__"]
