"""``kiki-dbus-gateway``: the D-Bus gateway (see the service README)."""

from kiki_dbus_gateway import __version__
from kiki_dbus_gateway.config import GatewayConfig
from kiki_dbus_gateway.server import serve
from libkiki.service import service_main


def main() -> None:
    service_main("dbus-gateway", __version__, GatewayConfig, serve)


if __name__ == "__main__":
    main()
