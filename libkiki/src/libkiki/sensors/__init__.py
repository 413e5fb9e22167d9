"""Sensor rings in shared memory and the client side of the sensor publisher.

* :mod:`libkiki.sensors.layout` -- sample layouts (typed fields, struct format, hash).
* :mod:`libkiki.sensors.ring` -- the ring format, sans-I/O writer and reader.
* :mod:`libkiki.sensors.shm` -- mapping rings in ``/dev/shm``.
* :mod:`libkiki.sensors.client` -- :class:`SensorClient`, :class:`SensorReader` and
  :class:`ExternalSensor` over ``sensors.sock`` (``libkiki.rpc``; wake-ups are inline
  notifications, handled as they are read).
* :mod:`libkiki.sensors.blocking` -- :class:`BlockingSensorReader`, for a thread that blocks:
  it sleeps on the ring's wake counter (:mod:`libkiki.sensors.futex`), and the publisher wakes
  all such sleepers of a sensor with one system call.

The ring format, the notify protocol and the measurements are in
``services/sensor-publisher/README.md``.
"""
