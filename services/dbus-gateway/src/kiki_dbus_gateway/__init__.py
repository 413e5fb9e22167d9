"""kiki-dbus-gateway: MPRIS, portals and notifications from the session bus, for agents."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kiki-dbus-gateway")
except PackageNotFoundError:
    __version__ = "0.0.0"
