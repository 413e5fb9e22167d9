"""External sensors against the real publisher: an app that breaks its own ring, and the
limits and names taken at register time."""

from __future__ import annotations

import asyncio
import grp
import os
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from kikitest.sensor_fixtures import StartPublisher
from libkiki.errors import (
    Conflict,
    InvalidFrame,
    InvalidRequest,
    KikiError,
    LimitExceeded,
    PermissionDenied,
)
from libkiki.sensors.client import ExternalSensor, SensorClient
from libkiki.sensors.layout import Field, Layout
from libkiki.sensors.shm import MappedReader, MappedWriter

pytestmark = pytest.mark.integration

WHEEL = Layout("wheel", (Field("speed", "f64", "m/s"), Field("ticks", "u32")))

# A reader in its own process: a SIGBUS would kill it, which the test must be able to see.
READER = """
import asyncio, sys
from libkiki.errors import InvalidFrame
from libkiki.sensors.client import SensorReader
from libkiki.sensors.layout import Field, Layout

WHEEL = Layout("wheel", (Field("speed", "f64", "m/s"), Field("ticks", "u32")))

async def main() -> None:
    async with SensorReader(sys.argv[2], path=sys.argv[1], layout=WHEEL, from_start=True) as r:
        batch = await r.next_batch()
        print("read", batch.count, flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # the ring is truncated meanwhile
        try:
            batch = await r.next_batch()
            print("no error", batch.count, flush=True)
        except InvalidFrame:
            print("InvalidFrame", flush=True)

asyncio.run(main())
"""


def _register(name: str) -> dict[str, object]:
    return {"name": name, "layout": WHEEL.to_json(), "capacity": 16}


async def test_a_truncated_external_ring_is_a_typed_error(
    start_publisher: StartPublisher,
) -> None:
    pub = start_publisher()
    async with AsyncExitStack() as stack:
        exts = [
            await stack.enter_async_context(
                ExternalSensor(name, WHEEL, capacity=16, path=pub.socket)
            )
            for name in ("a", "b", "c")
        ]
        for ext in exts:
            await ext.write((1.5, 7))
        reader = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            READER,
            str(pub.socket),
            exts[0].id,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert reader.stdout is not None
            assert reader.stdin is not None
            line = await asyncio.wait_for(reader.stdout.readline(), 20)
            assert line.split() == [b"read", b"1"]
            # The apps truncate their rings (anyone may do this to a file they own); this
            # process, the apps' too, puts the size back before it touches its mappings again.
            paths = [f"/dev/shm/{ext.view['ring']}" for ext in exts]
            sizes = [os.stat(p).st_size for p in paths]
            for path, size in zip(paths, sizes, strict=True):
                stack.callback(os.truncate, path, size)
            for path in paths:
                os.truncate(path, 0)
            reader.stdin.write(b"go\n")
            await reader.stdin.drain()
            out = await asyncio.wait_for(reader.stdout.read(), 20)
            assert out.split() == [b"InvalidFrame"]
            # Exited normally: not killed by SIGBUS (-7).
            assert await asyncio.wait_for(reader.wait(), 20) == 0
        finally:
            if reader.returncode is None:
                reader.kill()
                await reader.wait()
        async with SensorClient(pub.socket) as client:
            # InvalidFrame, which JSON-RPC carries as an invalid request (its code).
            with pytest.raises(InvalidRequest, match="truncated"):
                await client.request("sensors/read", {"sensor": exts[1].id})
            with pytest.raises(InvalidRequest, match="truncated"):
                await exts[2].client.request("sensors/written", {"sensor": exts[2].id})
            # The publisher is alive and answers; the broken sensors are gone.
            stats = await client.stats()
            listed = {s["id"] for s in await client.list_sensors()}
        assert "imu0" in stats["sensors"]
        assert not {e.id for e in exts} & (set(stats["sensors"]) | listed)
        assert pub.proc.poll() is None


async def test_external_limits_count_at_register_across_connections(
    start_publisher: StartPublisher,
) -> None:
    pub = start_publisher(max_external=2, max_external_per_uid=1)
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(SensorClient(pub.socket)) for _ in range(4)]
        await clients[0].request("sensors/register", _register("n0"))
        for i, client in enumerate(clients[1:], 1):
            with pytest.raises(LimitExceeded):
                await client.request("sensors/register", _register(f"n{i}"))
    # The connection that reserved the name left: the reservation goes with it.
    async with SensorClient(pub.socket) as client:

        async def freed() -> bool:
            try:
                await client.request("sensors/register", _register("n0"))
            except LimitExceeded:
                return False
            return True

        async with asyncio.timeout(10):
            while not await freed():  # noqa: ASYNC110 -- the other process cleans up
                await asyncio.sleep(0.05)


async def test_a_duplicate_external_name_is_refused(start_publisher: StartPublisher) -> None:
    pub = start_publisher()
    async with SensorClient(pub.socket) as one, SensorClient(pub.socket) as two:
        first = await one.request("sensors/register", _register("wheel"))
        with pytest.raises(Conflict, match="already registered"):
            await two.request("sensors/register", _register("wheel"))
        # Attached, it is still taken; the first one's sensor is the one listed.
        async with ExternalSensor("dup", WHEEL, capacity=16, path=pub.socket) as ext:
            with pytest.raises(Conflict):
                await two.request("sensors/register", _register("dup"))
            views = {v["id"]: v for v in await two.list_sensors()}
            assert views[ext.id]["owner"]["pid"] == os.getpid()
        assert first["sensor"] == "ext-uid0-wheel"


def test_reader_refuses_a_truncated_fd_ring(tmp_path: Path) -> None:
    """The pread reader: a short read is an InvalidFrame, never a fault."""
    writer = MappedWriter("kt-trunc", WHEEL, 16, shm_dir=tmp_path)
    try:
        writer.ring.write(1, (1.0, 2))
        reader = MappedReader("kt-trunc", WHEEL, tmp_path, mapped=False, owner=os.getuid())
        assert reader.ring.latest().rows() == [(1.0, 2)]
        os.truncate(tmp_path / "kt-trunc", 64)
        with pytest.raises(InvalidFrame):
            reader.ring.latest()
        with pytest.raises(KikiError):
            MappedReader("kt-trunc", WHEEL, tmp_path, owner=os.getuid() + 1)
        reader.close()
    finally:
        writer.close()


async def test_external_rings_take_the_read_policy(
    start_publisher: StartPublisher, sockdir: Path
) -> None:
    (sockdir / "etc").mkdir(exist_ok=True)
    (sockdir / "etc" / "sensor-publisher.toml").write_text(
        '[read_policy]\n"ext-*-secret" = ["uid:0"]\n"*" = ["*"]\n'
        '[ring_groups]\n"ext-*-shared" = "nogroup"\n'
    )
    pub = start_publisher()
    nogroup = grp.getgrnam("nogroup").gr_gid
    async with (
        ExternalSensor("secret", WHEEL, capacity=16, path=pub.socket) as secret,
        ExternalSensor("shared", WHEEL, capacity=16, path=pub.socket) as shared,
    ):
        private = os.stat(f"/dev/shm/{secret.view['ring']}")
        open_ = os.stat(f"/dev/shm/{shared.view['ring']}")
    # Restricted: the app's alone (readers use sensors/read); open: its readers' group.
    assert private.st_mode & 0o777 == 0o600
    assert (open_.st_mode & 0o777, open_.st_gid) == (0o640, nogroup)
    # An app that sets a looser mode than the policy's is refused at attach.
    async with SensorClient(pub.socket) as client:
        reg = await client.request("sensors/register", _register("secret"))
        assert reg["ringMode"] == 0o600
        writer = MappedWriter(reg["ring"], WHEEL, 16, mode=0o640)
        try:
            with pytest.raises(PermissionDenied, match="read policy"):
                await client.request("sensors/attach", {"sensor": reg["sensor"]})
        finally:
            writer.close()
