"""The edge Worker under ``workerd serve``, as a conformance endpoint (``SyncEndpoint``).

:func:`build_edge` bundles ``edge/src`` with the edge's own esbuild (``npm run build``) into a
directory beside a copy of ``edge/workerd.capnp``, once per test session. :class:`EdgeServer`
runs ``workerd serve`` on a listening socket this object holds (``--socket-fd``), so a restart
keeps its port, with the objects' SQLite storage in a directory of its own (``localDisk``),
which a restart keeps too. Test modules hold one with :func:`edge_server` (a module-scoped
fixture of their own). The trusted key is a fresh Ed25519 key per server, handed to the
Worker as the ``KIKI_TRUSTED_KEYS`` binding.

:class:`RevocationGate` stands between a device relay and the edge: a real TCP proxy that can
answer the edge's revoke requests with a status of the test's choosing (503, 403) while the
link's WebSocket passes through, so a test has the edge reachable for the link and refusing
revocations.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from kikitest import REPO
from libkiki.sync.tokens import SigningKey

EDGE = REPO / "edge"
WORKERD = EDGE / "node_modules" / ".bin" / "workerd"
TIMEOUT = 15.0
ISSUER = "test-device"


def build_edge(out: Path) -> Path:
    """The Worker bundled into ``out/dist/index.js`` beside ``out/workerd.capnp``; returns
    the config's path. Installs the edge's npm packages from its lockfile first if needed."""
    if shutil.which("npm") is None:
        raise RuntimeError("npm is not installed (scripts/install-test-deps installs node)")
    subprocess.run([str(REPO / "scripts" / "install-node-deps"), "edge"], check=True, timeout=300)
    subprocess.run(
        ["npm", "run", "--silent", "build"],
        cwd=EDGE,
        env=dict(os.environ, KIKI_EDGE_OUT=str(out / "dist")),
        check=True,
        capture_output=True,
        timeout=120,
    )
    config = out / "workerd.capnp"
    shutil.copyfile(EDGE / "workerd.capnp", config)
    return config


class EdgeServer:
    """``workerd serve`` of the edge Worker on a port and a storage directory it keeps."""

    name = "edge"

    def __init__(
        self, config: Path, workdir: Path, key: SigningKey | None = None, **bindings: str
    ) -> None:
        self.config = config
        self.workdir = workdir
        self.storage = workdir / "storage"
        self.storage.mkdir(parents=True, exist_ok=True)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(512)
        self.port: int = self.listener.getsockname()[1]
        self.key = key or SigningKey.generate()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KIKI_")}
        self.env["KIKI_TRUSTED_KEYS"] = json.dumps([self.key.public_jwk()])
        self.env.update(bindings)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        fd = self.listener.fileno()
        self.starts += 1
        with open(self.workdir / f"workerd-{self.starts}.log", "wb") as log:
            self.proc = subprocess.Popen(
                [
                    str(WORKERD),
                    "serve",
                    "--verbose",
                    str(self.config),
                    "--directory-path",
                    f"storage={self.storage}",
                    "--socket-fd",
                    f"http={fd}",
                ],
                env=self.env,
                pass_fds=(fd,),
                stdout=log,
                stderr=log,
            )
        self.wait_ready()

    def wait_ready(self) -> None:
        # The socket is bound and listening already: the first answer means workerd serves.
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                status, _ = self.request("GET", "/healthz")
                if status == 200:
                    return
            except OSError:
                pass
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"workerd exited {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"workerd did not answer within {TIMEOUT} s")
            time.sleep(0.05)

    def log_tail(self) -> str:
        log = self.workdir / f"workerd-{self.starts}.log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else ""

    def request(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        """One HTTP request; the status and the JSON answer."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers=headers)
            answer = conn.getresponse()
            raw = answer.read()
        finally:
            conn.close()
        return answer.status, json.loads(raw) if raw else None

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        self.listener.close()

    # -- SyncEndpoint ---------------------------------------------------------------------------

    def url(self, session: str, token: str | None) -> str:
        query = f"?token={token}" if token is not None else ""
        return f"ws://127.0.0.1:{self.port}/session/{session}{query}"

    def token(self, session: str, role: str, *, ttl: float = 3600, sub: str = "test") -> str:
        """A token of this server's trusted key; a ``ttl`` of 0 or less gives one expired
        ``-ttl`` seconds ago."""
        now = time.time()
        if ttl <= 0:
            return self.key.issue(session, role, sub=sub, iss=ISSUER, ttl=60, now=now + ttl - 60)
        return self.key.issue(session, role, sub=sub, iss=ISSUER, ttl=ttl, now=now)

    async def revoke(self, session: str, jti: str) -> None:
        device = self.token(session, "device")
        status, answer = await asyncio.to_thread(
            self.request, "POST", f"/session/{session}/revoke", {"jti": jti}, device
        )
        if status != 200:
            raise RuntimeError(f"revoke: {status} {answer}")

    async def restart(self, *, kill: bool) -> None:
        await asyncio.to_thread(self.stop, kill=kill)
        await asyncio.to_thread(self.start)

    def info(self, session: str) -> dict[str, Any]:
        """What the session's object holds now (``GET /session/<name>/info``)."""
        status, answer = self.request(
            "GET", f"/session/{session}/info", token=self.token(session, "device")
        )
        if status != 200:
            raise RuntimeError(f"info: {status} {answer}")
        result: dict[str, Any] = answer
        return result


_built: Path | None = None


def built_config() -> Path:
    """The Worker built once per test process (removed at exit)."""
    global _built
    if _built is None:
        out = Path(tempfile.mkdtemp(prefix="kiki-edge-build-"))
        atexit.register(shutil.rmtree, out, True)
        _built = build_edge(out)
    return _built


@contextlib.contextmanager
def edge_server(key: SigningKey | None = None, **bindings: str) -> Iterator[EdgeServer]:
    """A running workerd of the edge Worker with its own port and storage, trusting ``key``
    (a new one by default); ``bindings`` set the Worker's limits (``KIKI_MAX_CLIENTS="2"``)."""
    workdir = Path(tempfile.mkdtemp(prefix="kiki-edge-"))
    server = EdgeServer(built_config(), workdir, key, **bindings)
    try:
        server.start()
        yield server
    finally:
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)


class RevocationGate:
    """A TCP proxy on a port of its own to ``127.0.0.1:<target>``. While :attr:`refusing` is
    a status, a connection whose first request is a ``POST .../revoke`` is answered with it and
    closed without reaching the target (counted in :attr:`refused`); every other connection
    (the link's WebSocket included) is passed through byte for byte. Runs on the test's event
    loop: ``async with RevocationGate(edge.port) as gate``."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.refusing: int | None = None
        self.refused = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            first = await reader.readline()
            status = self.refusing
            if status is not None and first.startswith(b"POST ") and b"/revoke " in first:
                self.refused += 1
                writer.write(
                    f"HTTP/1.1 {status} Refused\r\n".encode()
                    + b"Content-Length: 0\r\nConnection: close\r\n\r\n"
                )
                await writer.drain()
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
            up_writer.write(first)
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    while data := await source.read(65536):
        sink.write(data)
        await sink.drain()
    if sink.can_write_eof():
        sink.write_eof()
