"""``kiki-updater``: see the service README."""

from kiki_updater import __version__
from kiki_updater.config import UpdaterConfig
from kiki_updater.server import serve
from libkiki.service import service_main


def main() -> None:
    service_main("updater", __version__, UpdaterConfig, serve)


if __name__ == "__main__":
    main()
