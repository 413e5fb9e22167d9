"""``kiki-sensor-publisher``: see the service README."""

from kiki_sensor_publisher import __version__
from kiki_sensor_publisher.config import SensorConfig
from kiki_sensor_publisher.server import serve
from libkiki.service import service_main


def main() -> None:
    service_main("sensor-publisher", __version__, SensorConfig, serve)


if __name__ == "__main__":
    main()
