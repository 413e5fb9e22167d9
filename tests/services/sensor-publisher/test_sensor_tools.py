"""The publisher's tools through the real broker, and the ``kiki sensors`` commands."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from kikitest import VENV_BIN
from kikitest.sensor_fixtures import StartPublisher
from libkiki.errors import KikiError
from libkiki.tools import ToolClient

pytestmark = pytest.mark.integration


async def test_sensor_tools_on_the_broker(
    broker: tuple[Path, subprocess.Popen[bytes]], start_publisher: StartPublisher
) -> None:
    tools_sock, _ = broker
    start_publisher(broker_tools=True, broker_socket=str(tools_sock))
    async with ToolClient(tools_sock) as client:
        async with asyncio.timeout(15):
            while "dev.kiki.sensor.read" not in {t["name"] for t in await client.list()}:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        listed = await client.call("dev.kiki.sensor.list")
        ids = {s["id"] for s in listed["sensors"]}
        assert {"imu0", "cpu", "memory"} <= ids
        imu = next(s for s in listed["sensors"] if s["id"] == "imu0")
        assert imu["fields"] == ["ax", "ay", "az", "gx", "gy", "gz"]
        # The broker validated this output against the lexicon dev.kiki.sensor.read.
        async with asyncio.timeout(10):
            while True:  # the ring may hold fewer than 3 samples right after the start
                read = await client.call("dev.kiki.sensor.read", {"sensor": "imu0", "count": 3})
                samples = read["samples"]
                if len(samples) == 3:
                    break
                await asyncio.sleep(0.01)
        assert [s["seq"] for s in samples] == list(range(samples[0]["seq"], samples[0]["seq"] + 3))
        az = samples[0]["values"][2] / 10 ** read["sensor"]["scale"]
        assert 9.7 < az < 9.9
        with pytest.raises(KikiError):
            await client.call("dev.kiki.sensor.read", {"sensor": "nope"})


async def _kiki(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "kiki"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_kiki_sensors_commands(start_publisher: StartPublisher) -> None:
    pub = start_publisher()
    sock = str(pub.socket)
    code, out, _ = await _kiki("sensors", "--socket", sock, "list", "--json")
    assert code == 0
    assert "imu0" in {s["id"] for s in orjson.loads(out)}
    code, out, _ = await _kiki("sensors", "--socket", sock, "list")
    assert code == 0
    assert out.splitlines()[0].split()[:3] == ["SENSOR", "KIND", "RATE"]
    code, out, _ = await _kiki(
        "sensors", "--socket", sock, "watch", "imu0", "--json", "--count", "5"
    )
    assert code == 0
    lines: list[dict[str, Any]] = [orjson.loads(line) for line in out.splitlines()]
    assert len(lines) == 5
    assert [x["index"] for x in lines] == list(range(lines[0]["index"], lines[0]["index"] + 5))
    assert set(lines[0]["values"]) == {"ax", "ay", "az", "gx", "gy", "gz"}
    code, out, _ = await _kiki("sensors", "--socket", sock, "watch", "imu0", "--count", "100")
    assert code == 0
    assert out.startswith("imu0  #")
    assert "Hz" in out
    # The same through the ring's futex (BlockingSensorReader), as JSON and for people.
    code, out, _ = await _kiki(
        "sensors", "--socket", sock, "watch", "imu0", "--futex", "--json", "--count", "50"
    )
    assert code == 0
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert [x["index"] for x in lines] == list(range(lines[0]["index"], lines[0]["index"] + 50))
    code, out, _ = await _kiki(
        "sensors", "--socket", sock, "watch", "imu0", "--futex", "--count", "100"
    )
    assert code == 0
    assert out.startswith("imu0  #")
    code, out, _ = await _kiki("sensors", "--socket", sock, "stats", "--json")
    assert code == 0
    assert orjson.loads(out)["sensors"]["imu0"]["nominalHz"] == 1000
    code, out, _ = await _kiki("sensors", "--socket", sock, "stats")
    assert code == 0
    assert "OVERRUNS" in out
    assert "FUTEX" in out
    assert "IMU sampled by: thread" in out  # nobody wants messages from it now
    code, _, err = await _kiki("sensors", "--socket", sock, "watch", "nope")
    assert code == 1
    assert "no sensor 'nope'" in err
    code, _, err = await _kiki("sensors", "--socket", sock, "watch", "nope", "--futex")
    assert code == 1
    assert "no sensor 'nope'" in err
