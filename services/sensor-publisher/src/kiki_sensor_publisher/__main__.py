"""``kiki-sensor-publisher``: see the service README."""

from kiki_sensor_publisher import __version__
from kiki_sensor_publisher.server import serve
from libkiki.config import ServiceConfig
from libkiki.service import service_main


def main() -> None:
    service_main("sensor-publisher", __version__, ServiceConfig, serve)


if __name__ == "__main__":
    main()
