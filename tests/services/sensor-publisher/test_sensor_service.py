"""The real publisher process, its real socket and real shared memory."""

from __future__ import annotations

import asyncio
import grp
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from kiki_sensor_publisher.sources import SyntheticImu
from kikitest.sensor_fixtures import StartPublisher
from libkiki.errors import Conflict, InvalidParams, NotFound, SchemaError
from libkiki.sensors.client import ExternalSensor, SensorClient, SensorReader
from libkiki.sensors.layout import IMU6, MEMORY, Field, Layout
from libkiki.sensors.shm import MappedReader

pytestmark = pytest.mark.integration

IMU = SyntheticImu(1000)


def f32(values: tuple[float, ...]) -> tuple[float, ...]:
    return struct.unpack("<6f", struct.pack("<6f", *values))


Check = Callable[[], Awaitable[bool]]


async def eventually(what: str, check: Check, within: float = 10.0) -> None:
    """Poll ``check`` (a question to the publisher) until it holds; bounded."""
    try:
        async with asyncio.timeout(within):
            while not await check():  # noqa: ASYNC110 -- the answer is on the other process
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"no {what} within {within}s") from None


async def test_lists_kernel_and_imu_sensors(start_publisher: StartPublisher) -> None:
    pub = start_publisher()
    async with SensorClient(pub.socket) as client:
        sensors = {s["id"]: s for s in await client.list_sensors()}
        info = await client.request("dev.kiki.service.getInfo")
    assert {"imu0", "cpu", "cpu0", "memory"} <= set(sensors)
    assert info["sensors"] == len(sensors)
    imu = sensors["imu0"]
    assert imu["layout"]["hash"] == f"{IMU6.hash:016x}"
    assert imu["ring"] == f"{pub.prefix}.imu0"
    assert imu["capacity"] == 1024
    assert imu["rateHz"] == 1000
    # The rings: mode 0640, one per sensor, all under this publisher's prefix.
    assert sorted(pub.rings()) == sorted(s["ring"] for s in sensors.values())
    mode = os.stat(f"/dev/shm/{imu['ring']}").st_mode & 0o777
    assert mode == 0o640


async def test_reader_gets_every_imu_sample_whole_and_in_order(
    start_publisher: StartPublisher,
) -> None:
    pub = start_publisher()
    async with SensorReader("imu0", path=pub.socket, layout=IMU6) as reader:
        expected = -1
        got = 0
        async with asyncio.timeout(20):
            async for batch in reader:
                assert batch.lost == 0
                for sample in batch:
                    if expected >= 0:
                        assert sample.index == expected
                    assert sample.values == f32(IMU.values(sample.index))
                    expected = sample.index + 1
                    got += 1
                if got >= 500:
                    break
        async with SensorClient(pub.socket) as client:
            stats = await client.stats()
        (sub,) = (s for s in stats["subscribers"] if s["sensors"] == ["imu0"])
        # Woken (how often by the fast path, straight to the transport, is the scheduler's
        # business); the fast path's wake-ups are counted among all of them.
        assert 0 <= sub["direct"] <= sub["wakeups"]
        assert sub["wakeups"] > 0
        latest = reader.latest()
        assert latest.count == 1
        assert latest.start >= expected - 1
        before = time.monotonic_ns()
        window = reader.history(0.2)
        after = time.monotonic_ns()
        ts = window.timestamps()
        assert ts == sorted(ts)
        # Everything in the window is within 0.2 s of the call; the sample just before the
        # window (still in the ring) is older than that.
        assert all(t >= before - 200_000_000 for t in ts)
        older = reader.ring_reader().read(max(0, window.start - 1), 1)
        if window.start > 0 and older.count and older.start == window.start - 1:
            assert older.timestamps()[0] < after - 200_000_000
        assert [s.values for s in window] == [f32(IMU.values(s.index)) for s in window]


async def test_kernel_sources_write_real_values(start_publisher: StartPublisher) -> None:
    pub = start_publisher()
    async with SensorReader("memory", path=pub.socket, layout=MEMORY, from_start=True) as mem:
        async with asyncio.timeout(10):
            batch = await mem.next_batch()
        total, available, *_ = batch.rows()[-1]
        meminfo = await asyncio.to_thread(Path("/proc/meminfo").read_text)
        assert total == int(meminfo.split()[1]) * 1024
        assert 0 < available <= total
    async with SensorClient(pub.socket) as client:
        reply = await client.read("cpu", 1)
    busy = reply["samples"][0]["values"][0]
    assert 0 <= busy <= 10**4  # fixed point, scale 4


async def test_iio_devices_that_would_collide_do_not_stop_the_start(
    start_publisher: StartPublisher, tmp_path: Path
) -> None:
    from test_sensor_sources import IIO_TREE, _write

    _write(tmp_path, IIO_TREE)
    pub = start_publisher(sys_root=tmp_path)
    async with SensorClient(pub.socket) as client:
        iio = {s["id"] for s in await client.list_sensors() if s["kind"] == "iio"}
        read = await client.read("iio-ads1015")
    assert iio == {"iio-ads1015", "iio-bmi160", "iio-bmi160-2"}
    assert [f["name"] for f in read["sensor"]["layout"]["fields"]] == [
        "voltage0_voltage1",
        "voltage2",
    ]


@pytest.fixture
def squatted_imu_ring(shm_prefix: str) -> Iterator[Path]:
    """Another user's file under the name imu0's ring would have, which we cannot remove
    (immutable here, since the tests run as root; sticky /dev/shm does it for a non-root
    publisher)."""
    if shutil.which("chattr") is None:
        pytest.skip("needs chattr")
    squat = Path(f"/dev/shm/{shm_prefix}.imu0")
    squat.write_bytes(b"squatter" * 8)
    os.chown(squat, 65534, 65534)
    subprocess.run(["chattr", "+i", str(squat)], check=True)
    yield squat
    subprocess.run(["chattr", "-i", str(squat)], check=False)
    squat.unlink(missing_ok=True)


async def test_a_squatted_ring_name_does_not_stop_the_start(
    start_publisher: StartPublisher, shm_prefix: str, squatted_imu_ring: Path
) -> None:
    pub = start_publisher()
    async with SensorReader("imu0", path=pub.socket, layout=IMU6) as reader:
        async with asyncio.timeout(10):
            batch = await reader.next_batch()
    ring = reader.view["ring"]
    assert ring.startswith(f"{shm_prefix}.imu0.")
    assert reader.view["ringUid"] == os.geteuid()
    assert batch.count > 0
    assert [s.values for s in batch] == [f32(IMU.values(s.index)) for s in batch]
    # The squatter's file was never mapped, never written.
    assert await asyncio.to_thread(squatted_imu_ring.read_bytes) == b"squatter" * 8
    pub.proc.send_signal(signal.SIGTERM)
    assert pub.proc.wait(timeout=20) == 0
    assert pub.rings() == [squatted_imu_ring.name]  # its own, fresh name and all, is gone


async def test_symlinks_planted_under_the_prefix_are_removed_not_followed(
    start_publisher: StartPublisher, shm_prefix: str, tmp_path: Path
) -> None:
    """Links where imu0's and cpu's rings go (one of them another user's, if we are root) and
    a dangling one: the start removes all three, touches nothing they point to, warns about
    none of them, and the rings get their own names."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"not a ring" * 8)
    links = [Path(f"/dev/shm/{shm_prefix}.{name}") for name in ("imu0", "cpu", "gone")]
    try:
        for link in links[:2]:
            link.symlink_to(victim)
        links[2].symlink_to(tmp_path / "nothing")
        if os.geteuid() == 0:
            os.lchown(links[1], 65534, 65534)
        pub = start_publisher()
        assert not [link for link in links if link.is_symlink()]
        assert victim.read_bytes() == b"not a ring" * 8
        assert not (tmp_path / "nothing").exists()
        async with SensorClient(pub.socket) as client:
            rings = {s["id"]: s["ring"] for s in await client.list_sensors()}
        assert rings["imu0"] == links[0].name
        assert rings["cpu"] == links[1].name
        assert stat.S_ISREG(os.lstat(links[0]).st_mode)
        pub.proc.send_signal(signal.SIGTERM)
        assert pub.proc.wait(timeout=20) == 0
        assert pub.proc.stderr is not None
        log = pub.proc.stderr.read().decode()
        assert "WARNING" not in log, log
        assert pub.rings() == []  # and the clean stop removed its rings
    finally:
        for link in links:
            link.unlink(missing_ok=True)


async def test_unknown_sensor(start_publisher: StartPublisher) -> None:
    pub = start_publisher()
    with pytest.raises(NotFound):
        async with SensorReader("no-such-sensor", path=pub.socket):
            pass
    async with SensorClient(pub.socket) as client:
        with pytest.raises(NotFound) as exc:
            await client.read("no-such-sensor")
        assert exc.value.data == {"sensor": "no-such-sensor", "error": "UnknownSensor"}
        with pytest.raises(NotFound):
            await client.subscribe(["imu0", "no-such-sensor"])
        with pytest.raises(InvalidParams):
            await client.read("imu0", 5000)


async def test_layout_mismatch(start_publisher: StartPublisher) -> None:
    pub = start_publisher()
    with pytest.raises(SchemaError):
        async with SensorReader("imu0", path=pub.socket, layout=MEMORY):
            pass
    # Mapping the ring directly with the wrong layout: the header's hash refuses it too.
    with pytest.raises(SchemaError):
        MappedReader(f"{pub.prefix}.imu0", MEMORY)


async def test_reader_that_never_reads(start_publisher: StartPublisher) -> None:
    """A subscriber that never reads its socket: its wake-ups coalesce, its overruns are
    counted, the writer and the other readers are unaffected."""
    pub = start_publisher(capacity=64)
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(str(pub.socket))
    stuck.sendall(
        orjson.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "sensors/subscribe",
                "params": {"sensors": ["imu0"]},
            }
        )
        + b"\n"
    )
    try:
        async with SensorClient(pub.socket) as client:

            async def overrun() -> bool:
                stats = await client.stats()
                return bool(stats["sensors"]["imu0"]["overruns"] > 0)

            await eventually("an overrun", overrun)
            # A healthy reader meanwhile gets samples in order, without loss.
            async with SensorReader("imu0", path=pub.socket) as reader:
                got = 0
                async with asyncio.timeout(10):
                    async for batch in reader:
                        assert batch.lost == 0
                        got += batch.count
                        if got >= 200:
                            break
            stats = await client.stats()
        imu = stats["sensors"]["imu0"]
        # The writer went on past a full ring while a subscriber never read: it never waited.
        assert imu["written"] > imu["capacity"]
        stuck_sub = next(s for s in stats["subscribers"] if s["sensors"] == ["imu0"])
        assert stuck_sub["coalesced"] > 0
        assert stuck_sub["pending"] <= 1  # one dict entry, however far behind
    finally:
        stuck.close()


async def test_a_slow_ring_reader_counts_what_it_lost(start_publisher: StartPublisher) -> None:
    pub = start_publisher(capacity=64)
    async with SensorReader("imu0", path=pub.socket) as reader:
        first = await reader.next_batch()
        written = reader.ring_reader().write_index
        async with asyncio.timeout(10):
            # Not reading (and not waiting on anything): the writer laps us.
            while reader.ring_reader().write_index < written + 200:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        batch = await reader.next_batch()
        assert batch.lost > 0
        assert reader.lost == batch.lost
        assert batch.start == first.end + batch.lost
        # Resumed at the oldest intact sample: everything after it is there.
        assert batch.count >= 32
        assert [s.values for s in batch] == [f32(IMU.values(s.index)) for s in batch]


async def test_garbage_on_the_notify_socket(start_publisher: StartPublisher) -> None:
    pub = start_publisher(max_line=4096)
    reader, writer = await asyncio.open_unix_connection(str(pub.socket))
    writer.write(b"\x00\xff not json\n")
    writer.write(b'{"jsonrpc":"2.0","id":1,"method":"sensors/subscribe","params":{"x":1}}\n')
    writer.write(b'{"jsonrpc":"2.0","id":2,"method":"sensors/read","params":["imu0","x"]}\n')
    writer.write(b'{"jsonrpc":"2.0","id":3,"method":"sensors/register","params":{"name":"a",')
    writer.write(b'"layout":{"name":"x","fields":[{"name":"a","type":"f128"}]}}}\n')
    await writer.drain()
    codes: dict[int | None, int] = {}
    async with asyncio.timeout(10):
        while len(codes) < 4:
            reply = orjson.loads(await reader.readline())
            codes[reply["id"]] = reply["error"]["code"]
    assert codes == {None: -32700, 1: -32602, 2: -32602, 3: -32602}
    writer.write(b"x" * 10000 + b"\n")  # over max_line
    await writer.drain()
    async with asyncio.timeout(10):
        rest = await reader.readline()
    assert orjson.loads(rest)["error"]["code"] == -32600
    writer.close()
    async with SensorClient(pub.socket) as client:  # nobody else noticed
        assert len(await client.list_sensors()) > 3
    assert pub.proc.poll() is None


async def test_subscribers_that_vanish_leak_nothing(start_publisher: StartPublisher) -> None:
    pub = start_publisher()
    async with SensorClient(pub.socket) as client:
        await client.stats()
        baseline = pub.fd_count()
        socks = []
        for _ in range(30):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(pub.socket))
            s.sendall(
                b'{"jsonrpc":"2.0","id":1,"method":"sensors/subscribe",'
                b'"params":{"sensors":["imu0","cpu"],"maxWakeupsPerSecond":100}}\n'
            )
            socks.append(s)

        async def all_subscribed() -> bool:
            return len((await client.stats())["subscribers"]) == 30

        await eventually("30 subscribers", all_subscribed)
        assert pub.fd_count() >= baseline + 30
        for s in socks:
            s.close()  # no unsubscribe, no goodbye

        async def all_gone() -> bool:
            stats = await client.stats()
            return not stats["subscribers"] and stats["connections"] == 1

        await eventually("subscribers cleaned up", all_gone)
        assert pub.fd_count() == baseline


async def test_external_sensor(start_publisher: StartPublisher) -> None:
    pub = start_publisher()
    wheel = Layout("wheel", (Field("speed", "f64", "m/s"), Field("ticks", "u32")))
    async with ExternalSensor("wheel", wheel, capacity=64, rate_hz=50, path=pub.socket) as ext:
        assert ext.id == "ext-uid0-wheel"
        ring = ext.view["ring"]
        assert os.stat(f"/dev/shm/{ring}").st_mode & 0o777 == 0o640
        async with SensorReader(ext.id, path=pub.socket, layout=wheel) as reader:
            for i in range(5):
                await ext.write((i * 0.5, i))
            got: list[tuple[float, int]] = []
            async with asyncio.timeout(10):
                async for batch in reader:
                    got += batch.rows()
                    if len(got) >= 5:
                        break
            assert got == [(i * 0.5, i) for i in range(5)]
        async with SensorClient(pub.socket) as client:
            assert ext.id in {s["id"] for s in await client.list_sensors()}
            with pytest.raises(Conflict):  # the same name again, on another connection
                await client.request(
                    "sensors/register", {"name": "wheel", "layout": wheel.to_json()}
                )
            with pytest.raises(InvalidParams):  # not a valid name
                await client.request(
                    "sensors/register", {"name": "Bad Name!", "layout": wheel.to_json()}
                )
            reply = await client.request(
                "sensors/register", {"name": "other", "layout": wheel.to_json()}
            )
            with pytest.raises(InvalidParams, match="create the ring"):
                await client.request("sensors/attach", {"sensor": reply["sensor"]})
    # The app left: its sensor is gone from the list and its ring is unlinked.
    async with SensorClient(pub.socket) as client:

        async def gone() -> bool:
            return ext.id not in {s["id"] for s in await client.list_sensors()}

        await eventually("the external sensor to go", gone)
    assert not await asyncio.to_thread(os.path.exists, f"/dev/shm/{ring}")


async def test_publisher_killed_and_restarted(start_publisher: StartPublisher) -> None:
    pub = start_publisher()
    async with SensorReader("imu0", path=pub.socket) as reader:
        async with asyncio.timeout(10):
            await reader.next_batch()
        generation = reader.view["generation"]
        old = MappedReader(f"{pub.prefix}.imu0", IMU6)
        pub.proc.send_signal(signal.SIGKILL)
        pub.proc.wait(timeout=10)
        # The rings of the dead run are still there, as it left them.
        assert f"{pub.prefix}.imu0" in pub.rings()
        before = old.ring.retired
        again = start_publisher()
        # The new run retired the stale ring (its readers' cue) and replaced it.
        assert (before, old.ring.retired) == (False, True)
        old.close()
        async with asyncio.timeout(20):
            batch = await reader.next_batch()
            while reader.restarts == 0:
                batch = await reader.next_batch()
        assert reader.view["generation"] != generation
        assert batch.count > 0
        assert [s.values for s in batch] == [f32(IMU.values(s.index)) for s in batch]
        assert again.pid != pub.pid


async def test_clean_stop_retires_and_removes_rings(start_publisher: StartPublisher) -> None:
    pub = start_publisher()
    mapped = MappedReader(f"{pub.prefix}.imu0", IMU6)
    try:
        before = mapped.ring.retired
        pub.proc.send_signal(signal.SIGTERM)
        assert pub.proc.wait(timeout=20) == 0
        assert (before, mapped.ring.retired) == (False, True)
        assert pub.rings() == []
    finally:
        mapped.close()


async def test_batched_wakeups_are_rate_limited(
    start_publisher: StartPublisher, service_env: dict[str, str]
) -> None:
    service_env["KIKI_SENSORS_IMU_HZ"] = "500"  # the short form of the setting
    pub = start_publisher(imu_hz=None)
    async with SensorReader("imu0", path=pub.socket, max_wakeups=20) as reader:
        batches = []
        async with asyncio.timeout(10):
            async for batch in reader:
                batches.append(batch)
                if len(batches) == 6:
                    break
        async with SensorClient(pub.socket) as client:
            stats = await client.stats()
    # Batched wake-ups bring every sample, in order (how many per wake-up is the scheduler's
    # business; the pacing itself is tested with a given clock in test_sensor_wake).
    assert all(b.lost == 0 and b.count > 0 for b in batches)
    assert [b.start for b in batches[1:]] == [b.end for b in batches[:-1]]
    sub = next(s for s in stats["subscribers"] if s["sensors"] == ["imu0"])
    assert sub["maxWakeupsPerSecond"] == 20
    assert stats["sensors"]["imu0"]["nominalHz"] == 500


async def test_permissions_by_peer_credentials(
    start_publisher: StartPublisher, sockdir: Path
) -> None:
    (sockdir / "etc").mkdir(exist_ok=True)
    (sockdir / "etc" / "sensor-publisher.toml").write_text(
        '[read_policy]\n"imu*" = ["uid:0"]\n"*" = ["*"]\n[ring_groups]\n"memory" = "nogroup"\n'
    )
    pub = start_publisher()
    os.chmod(sockdir, 0o755)
    os.chmod(pub.socket, 0o666)
    # A client running as nobody (with gid root, so the rings' group may read): imu0 is
    # hidden from it and refused, and the ring it may read it cannot open for writing.
    answers: list[Any] = _as_nobody(
        pub.socket, f"/dev/shm/{pub.prefix}.cpu", f"/dev/shm/{pub.prefix}.imu0"
    )
    listed = {s["id"] for s in answers[0]["result"]["sensors"]}
    assert "cpu" in listed
    assert "imu0" not in listed
    assert answers[1]["error"]["code"] == -32003  # PermissionDenied
    assert answers[2] == "read-only"
    # The file permissions say what the policy says: imu0's ring is the publisher's alone.
    assert answers[3] == "unreadable"
    assert os.stat(f"/dev/shm/{pub.prefix}.imu0").st_mode & 0o777 == 0o600
    assert os.stat(f"/dev/shm/{pub.prefix}.cpu").st_mode & 0o777 == 0o640
    memory = os.stat(f"/dev/shm/{pub.prefix}.memory")
    assert (memory.st_mode & 0o777, memory.st_gid) == (0o640, grp.getgrnam("nogroup").gr_gid)


def _as_nobody(path: Path, ring: str, private_ring: str) -> list[object]:
    """Ask the publisher two things from a forked child running as uid 65534."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no asyncio, plain sockets, then _exit
        try:
            os.close(rfd)
            os.setgid(0)
            os.setuid(65534)
            out: list[object] = []
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(path))
                f = s.makefile("rb")
                for i, (method, params) in enumerate(
                    [("sensors/list", {}), ("sensors/subscribe", {"sensors": ["imu0"]})]
                ):
                    msg = {"jsonrpc": "2.0", "id": i, "method": method, "params": params}
                    s.sendall(orjson.dumps(msg) + b"\n")
                    out.append(orjson.loads(f.readline()))
            try:
                os.close(os.open(ring, os.O_RDWR))
                out.append("writable")
            except PermissionError:
                out.append("read-only")
            try:
                os.close(os.open(private_ring, os.O_RDONLY))
                out.append("readable")
            except PermissionError:
                out.append("unreadable")
            os.write(wfd, orjson.dumps(out))
        finally:
            os._exit(0)
    os.close(wfd)
    data = b""
    while chunk := os.read(rfd, 1 << 16):
        data += chunk
    os.close(rfd)
    os.waitpid(pid, 0)
    result: list[object] = orjson.loads(data)
    return result
