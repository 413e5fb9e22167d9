"""``kiki-sync-relay``: the session sync relay (see the service README)."""

from kiki_sync_relay import __version__
from kiki_sync_relay.config import RelayConfig
from kiki_sync_relay.server import serve
from libkiki.service import service_main


def main() -> None:
    service_main("sync-relay", __version__, RelayConfig, serve)


if __name__ == "__main__":
    main()
