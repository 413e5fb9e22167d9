"""``kiki-a11y-server``: the accessibility-tree server (see the service README)."""

from kiki_a11y_server import __version__
from kiki_a11y_server.config import A11yConfig
from kiki_a11y_server.server import serve
from libkiki.service import service_main


def main() -> None:
    service_main("a11y-server", __version__, A11yConfig, serve)


if __name__ == "__main__":
    main()
