"""The transport the broker serves a host's stdin and stdout with (``PipePair``), on real
pipes: the end of input told apart, a last line ended, writes that outrun the reader, the
host's end of stdout gone, closing and aborting."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson
import pytest

from kiki_tool_broker.pipes import PipePair

pytestmark = pytest.mark.integration

BOUND = 10.0


@dataclass
class Recorder(asyncio.BufferedProtocol):
    """What the transport told its protocol, in order."""

    buffer: bytearray = field(default_factory=lambda: bytearray(64))
    data: bytearray = field(default_factory=bytearray)
    events: list[str] = field(default_factory=list)
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    error: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.events.append("made")

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes: int) -> None:
        self.data += self.buffer[:nbytes]

    def eof_received(self) -> bool:
        self.events.append("eof")
        return False

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        self.error = exc
        self.lost.set()


@dataclass
class Pipes:
    transport: PipePair
    protocol: Recorder
    ended: asyncio.Event
    host_in: int  # the host's end of stdin: it writes here
    host_out: int  # the host's end of stdout: it reads here
    fds: tuple[int, int]  # the transport's


@pytest.fixture
async def pipes() -> AsyncIterator[Pipes]:
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    fcntl.fcntl(stdout_w, fcntl.F_SETPIPE_SZ, 4096)
    protocol = Recorder()
    ended = asyncio.Event()
    transport = PipePair(
        asyncio.get_running_loop(), stdin_r, stdout_w, protocol, on_input_end=ended.set
    )
    yield Pipes(transport, protocol, ended, stdin_w, stdout_r, (stdin_r, stdout_w))
    transport.abort()
    for fd in (stdin_w, stdout_r):
        with contextlib.suppress(OSError):
            os.close(fd)


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


async def test_the_end_of_input_is_told_apart_and_a_last_line_ended(pipes: Pipes) -> None:
    async with asyncio.timeout(BOUND):
        os.write(pipes.host_in, b'{"a": 1}\n{"b"')
        os.close(pipes.host_in)
        await pipes.ended.wait()
    assert bytes(pipes.protocol.data) == b'{"a": 1}\n{"b"\n'
    # The end of input is not the end of the connection: no eof_received, still writable.
    assert pipes.protocol.events == ["made"]
    assert not pipes.transport.is_closing()
    pipes.transport.write(b"answer\n")
    assert os.read(pipes.host_out, 100) == b"answer\n"


async def test_a_whole_last_line_is_left_as_it_is(pipes: Pipes) -> None:
    async with asyncio.timeout(BOUND):
        os.write(pipes.host_in, b"line\n")
        os.close(pipes.host_in)
        await pipes.ended.wait()
    assert bytes(pipes.protocol.data) == b"line\n"


async def test_writes_that_outrun_the_host_pause_the_writers_until_it_reads(
    pipes: Pipes,
) -> None:
    chunk = bytes(range(256)) * 256  # 64 KiB, through a 4 KiB pipe
    for _ in range(3):
        pipes.transport.write(chunk)
    assert pipes.protocol.events == ["made", "pause"]
    assert pipes.transport.get_write_buffer_size() > 0
    received = bytearray()
    async with asyncio.timeout(BOUND):
        while len(received) < 3 * len(chunk):
            received += await asyncio.to_thread(os.read, pipes.host_out, 1 << 16)
    assert bytes(received) == chunk * 3
    assert pipes.protocol.events == ["made", "pause", "resume"]
    assert pipes.transport.get_write_buffer_size() == 0


async def test_close_writes_what_is_buffered_then_lets_go(pipes: Pipes) -> None:
    data = b"x" * 20000
    pipes.transport.write(data)
    pipes.transport.close()
    assert pipes.transport.is_closing()
    received = bytearray()
    async with asyncio.timeout(BOUND):
        while chunk := await asyncio.to_thread(os.read, pipes.host_out, 1 << 16):
            received += chunk
        await pipes.protocol.lost.wait()
    assert bytes(received) == data
    assert pipes.protocol.error is None
    assert not any(is_open(fd) for fd in pipes.fds)


async def test_abort_drops_what_is_buffered(pipes: Pipes) -> None:
    pipes.transport.write(b"x" * 20000)
    pipes.transport.abort()
    async with asyncio.timeout(BOUND):
        await pipes.protocol.lost.wait()
    assert len(os.read(pipes.host_out, 1 << 16)) == 4096  # what the pipe had taken
    assert os.read(pipes.host_out, 1 << 16) == b""
    assert not any(is_open(fd) for fd in pipes.fds)


async def test_the_host_closing_stdout_ends_the_transport(pipes: Pipes) -> None:
    os.close(pipes.host_out)
    pipes.transport.write(b"nobody reads this\n")
    async with asyncio.timeout(BOUND):
        await pipes.protocol.lost.wait()
    assert isinstance(pipes.protocol.error, BrokenPipeError)
    assert isinstance(pipes.transport.error, BrokenPipeError)
    assert not any(is_open(fd) for fd in pipes.fds)


def line(message: dict[str, object]) -> bytes:
    return orjson.dumps(message) + b"\n"


async def test_close_flushes_until_its_bound_and_counts_the_answers_cut_off(
    pipes: Pipes,
) -> None:
    # The pipe takes 4 KiB, the start of the first answer. The rest is dropped at the bound;
    # the answers among it are counted, the one cut short included, the notification not.
    answers = [line({"jsonrpc": "2.0", "id": n, "result": {"t": "a" * 6000}}) for n in range(2)]
    note = line({"jsonrpc": "2.0", "method": "n", "params": {"t": "n"}})
    for data in (answers[0], note, answers[1]):
        pipes.transport.write(data)
    pipes.transport.flush_by(asyncio.get_running_loop().time())
    pipes.transport.close()
    async with asyncio.timeout(BOUND):
        await pipes.protocol.lost.wait()
    assert os.read(pipes.host_out, 1 << 16) == answers[0][:4096]
    assert os.read(pipes.host_out, 1 << 16) == b""
    assert pipes.transport.undelivered == 2
    assert pipes.protocol.error is None


async def test_a_notification_cut_short_is_not_counted_as_an_answer(pipes: Pipes) -> None:
    note = line({"jsonrpc": "2.0", "method": "n", "params": {"t": "n" * 6000}})
    answer = line({"jsonrpc": "2.0", "id": 1, "result": {}})
    for data in (note, answer):
        pipes.transport.write(data)
    pipes.transport.flush_by(asyncio.get_running_loop().time())
    pipes.transport.close()
    async with asyncio.timeout(BOUND):
        await pipes.protocol.lost.wait()
    assert os.read(pipes.host_out, 1 << 16) == note[:4096]
    assert pipes.transport.undelivered == 1


async def test_what_close_writes_in_time_is_not_counted(pipes: Pipes) -> None:
    answer = line({"jsonrpc": "2.0", "id": 1, "result": {"t": "a" * 20000}})
    pipes.transport.write(answer)
    pipes.transport.flush_by(asyncio.get_running_loop().time() + 3600)
    pipes.transport.close()
    received = bytearray()
    async with asyncio.timeout(BOUND):
        while chunk := await asyncio.to_thread(os.read, pipes.host_out, 1 << 16):
            received += chunk
        await pipes.protocol.lost.wait()
    assert bytes(received) == answer
    assert pipes.transport.undelivered == 0
