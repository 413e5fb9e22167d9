"""The edge Worker under ``workerd serve``, as a conformance endpoint (``SyncEndpoint``).

:func:`build_edge` bundles ``edge/src`` with the edge's own esbuild (``npm run build``) into a
directory beside a copy of ``edge/workerd.capnp``, once per test session. :class:`EdgeServer`
runs ``workerd serve`` on a listening socket this object holds (``--socket-fd``), so a restart
keeps its port, with the objects' SQLite storage in a directory of its own (``localDisk``),
which a restart keeps too. Test modules hold one with :func:`edge_server` (a module-scoped
fixture of their own). The trusted key is a fresh Ed25519 key per server, handed to the
Worker as the ``KIKI_TRUSTED_KEYS`` binding.
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
from typing import Any

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
