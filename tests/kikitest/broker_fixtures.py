"""Fixtures for the tool broker: the real broker process, and a raw JSON-RPC peer for it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import pwd
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from kikitest.second_user import attacker_account


@pytest.fixture
def broker(
    request: pytest.FixtureRequest, sockdir: Path, spawn_service: Any
) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """The real kiki-tool-broker, bound by hand in ``sockdir``, with a 2 s provider timeout.

    Parametrize it indirectly with a dict of environment variables to change its limits.
    """
    (sockdir / "etc").mkdir(exist_ok=True)
    env = {"KIKI_TOOL_BROKER_CALL_TIMEOUT": "2", **getattr(request, "param", {})}
    proc, notes = spawn_service("tool-broker", extra_env=env)
    notes.wait_for("READY")
    yield sockdir / "tools.sock", proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


@pytest.fixture(scope="session")
def attacker() -> pwd.struct_passwd:
    """A second Unix user, ``kiki-test-attacker`` (made if missing): see second_user.run_as."""
    return attacker_account()


class RpcFailed(Exception):
    """A JSON-RPC error answer, as it came."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message"))
        self.code: int = error["code"]
        self.data: Any = error.get("data")


class RawPeer:
    """A JSON-RPC peer on the broker's socket that speaks the wire directly (no libkiki client):
    requests it sends are answered through :meth:`request`; requests and notifications the
    broker sends land in ``requests`` and ``notes`` (a batch is taken apart, in order)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.notes: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.requests: asyncio.Queue[tuple[Any, str, dict[str, Any]]] = asyncio.Queue()
        self._answers: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, path: Path) -> RawPeer:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=8 << 20)
        return cls(reader, writer)

    async def __aenter__(self) -> RawPeer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._task.cancel()
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()

    def send(self, obj: Any) -> None:
        self.writer.write(orjson.dumps(obj) + b"\n")

    async def request(self, method: str, params: Any = None) -> Any:
        rid = next(self._ids)
        fut = self._answers[rid] = asyncio.get_running_loop().create_future()
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        return await fut

    def notify(self, method: str, params: Any) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def answer(self, rid: Any, result: Any = None, error: dict[str, Any] | None = None) -> None:
        if error is not None:
            self.send({"jsonrpc": "2.0", "id": rid, "error": error})
        else:
            self.send({"jsonrpc": "2.0", "id": rid, "result": {} if result is None else result})

    async def note(self, method: str | None = None) -> dict[str, Any]:
        """The next notification (that must be ``method``, when given)."""
        got, params = await self.notes.get()
        if method is not None:
            assert got == method, (got, params)
        return params

    async def _read(self) -> None:
        while line := await self.reader.readline():
            obj = orjson.loads(line)
            for msg in obj if isinstance(obj, list) else [obj]:
                if "method" not in msg:
                    fut = self._answers.pop(msg["id"])
                    if "error" in msg:
                        fut.set_exception(RpcFailed(msg["error"]))
                    else:
                        fut.set_result(msg["result"])
                elif "id" in msg:
                    self.requests.put_nowait((msg["id"], msg["method"], msg.get("params", {})))
                else:
                    self.notes.put_nowait((msg["method"], msg.get("params", {})))
        for fut in self._answers.values():
            if not fut.done():
                fut.set_exception(ConnectionError("the broker closed the connection"))


def broker_rss_kib(pid: int) -> int:
    """The broker process's resident set, from /proc (KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")
