"""``kiki-tool-broker``: see the service README."""

from kiki_tool_broker import __version__
from kiki_tool_broker.config import BrokerConfig
from kiki_tool_broker.server import serve
from libkiki.service import service_main


def main() -> None:
    service_main("tool-broker", __version__, BrokerConfig, serve)


if __name__ == "__main__":
    main()
