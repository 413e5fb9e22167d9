"""``kiki-sensor-publisher``: see the service README."""

import os

from kiki_sensor_publisher import __version__
from kiki_sensor_publisher.config import SensorConfig
from kiki_sensor_publisher.server import serve
from libkiki.service import service_main

SHORT_PREFIX = "KIKI_SENSORS_"
PREFIX = "KIKI_SENSOR_PUBLISHER_"


def main() -> None:
    # KIKI_SENSORS_IMU_HZ=200 is short for KIKI_SENSOR_PUBLISHER_IMU_HZ=200 (the long name wins).
    for key, value in list(os.environ.items()):
        if key.startswith(SHORT_PREFIX):
            os.environ.setdefault(PREFIX + key[len(SHORT_PREFIX) :], value)
    service_main("sensor-publisher", __version__, SensorConfig, serve)


if __name__ == "__main__":
    main()
