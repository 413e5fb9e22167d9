"""kiki-updater: bootc for the OS, OSTree for apps and agents."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kiki-updater")
except PackageNotFoundError:
    __version__ = "0.0.0"
