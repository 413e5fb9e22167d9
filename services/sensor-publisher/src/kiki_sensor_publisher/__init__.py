"""kiki-sensor-publisher: sensor signals through shared memory and a notify socket."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kiki-sensor-publisher")
except PackageNotFoundError:
    __version__ = "0.0.0"
