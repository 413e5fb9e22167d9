"""What Type=notify-reload needs of a reload's notification: RELOADING=1 with MONOTONIC_USEC.

systemd (>= 253) takes a reload as done only when the service sends RELOADING=1 stamped with a
CLOCK_MONOTONIC time no earlier than the reload request, then READY=1. The test plays systemd on
a notify socket of its own.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from libkiki.systemd import Notifier

pytestmark = pytest.mark.integration


def test_reloading_is_stamped_on_the_monotonic_clock_in_microseconds(tmp_path: Path) -> None:
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(tmp_path / "notify"))
    manager.settimeout(10)
    notifier = Notifier(str(tmp_path / "notify"))
    try:
        requested = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert notifier.reloading()
        answered = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert notifier.ready("reloaded")
        first = manager.recv(4096).decode()
        second = manager.recv(4096).decode()
    finally:
        notifier.close()
        manager.close()
    fields = dict(line.split("=", 1) for line in first.splitlines())
    assert fields["RELOADING"] == "1"
    assert requested <= int(fields["MONOTONIC_USEC"]) <= answered
    assert dict(line.split("=", 1) for line in second.splitlines())["READY"] == "1"
