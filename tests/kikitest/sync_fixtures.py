"""Clients of the sync relay and the device relay as a conformance endpoint.

:class:`YClient` is a y-websocket client on pycrdt's codecs (the Python stock client);
:class:`NodePeers` drives the npm ``y-websocket`` ``WebsocketProvider`` clients of
``tests/kikitest/node/client.mjs`` over stdin/stdout (one Node process for many clients, read by
a thread so any event loop may use it). :class:`DeviceRelay` is a real ``kiki-sync-relay``
process holding a listening socket passed as systemd would, so a restart keeps its port.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from pycrdt import (
    Array,
    Awareness,
    Doc,
    Map,
    Text,
    YMessageType,
    YSyncMessageType,
    create_awareness_message,
    create_sync_message,
    create_update_message,
    handle_sync_message,
    read_message,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from kikitest import VENV_BIN
from libkiki.sync.tokens import SigningKey

NODE_DIR = Path(__file__).parent / "node"
TIMEOUT = 15.0


async def eventually(check: Callable[[], bool], within: float = TIMEOUT) -> None:
    """Wait until ``check()`` holds. Polled: what it reads (a CRDT, a Node process's answers)
    changes with no event to wait on."""
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


class YClient:
    """A pycrdt document joined to a session over the y-websocket protocol."""

    def __init__(self, doc: Doc[Any] | None = None) -> None:
        self.doc: Doc[Any] = doc or Doc()
        self.text = self.doc.get("text", type=Text)
        self.map = self.doc.get("map", type=Map)
        self.array = self.doc.get("array", type=Array)
        self.awareness = Awareness(self.doc)
        self.awareness.set_local_state(None)
        self.ws: ClientConnection | None = None
        self.synced = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason = ""
        self._remote = False
        self._reader: asyncio.Task[None] | None = None
        self.doc.observe(self._local_change)

    @classmethod
    async def join(cls, url: str, *, first: str | None = None, sync: bool = True) -> YClient:
        client = cls()
        await client.connect(url, first=first, sync=sync)
        return client

    async def connect(self, url: str, *, first: str | None = None, sync: bool = True) -> None:
        self.synced.clear()
        self.close_code = None
        self.ws = await connect(url, max_size=None)
        if first is not None:
            await self.ws.send(first)
        self._reader = asyncio.create_task(self._read(self.ws))
        await self.send(create_sync_message(self.doc))
        if (state := self.awareness.get_local_state()) is not None:
            self.set_awareness(state)
        if sync:
            await self.wait_synced()

    async def wait_synced(self) -> None:
        async with asyncio.timeout(TIMEOUT):
            await self.synced.wait()

    async def send(self, message: bytes | str) -> None:
        if self.ws is not None:
            with contextlib.suppress(ConnectionClosed):
                await self.ws.send(message)

    def _local_change(self, event: Any) -> None:
        if self._remote or self.ws is None:
            return
        _spawn(self.send(create_update_message(event.update)))

    def set_awareness(self, state: dict[str, Any] | None) -> None:
        self.awareness.set_local_state(state)
        _spawn(self.send(self.awareness_message()))

    def awareness_message(self) -> bytes:
        """The awareness message carrying this client's own state as it is now."""
        update = self.awareness.encode_awareness_update([self.awareness.client_id])
        message: bytes = create_awareness_message(update)
        return message

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for message in ws:
                if isinstance(message, str):
                    continue
                if message[0] == YMessageType.SYNC:
                    self._remote = True
                    try:
                        reply = handle_sync_message(message[1:], self.doc)
                    finally:
                        self._remote = False
                    if reply is not None:
                        await ws.send(reply)
                    if message[1] == YSyncMessageType.SYNC_STEP2:
                        self.synced.set()
                elif message[0] == YMessageType.AWARENESS:
                    self.awareness.apply_awareness_update(read_message(message[1:]), "remote")
        except ConnectionClosed:
            pass
        finally:
            rcvd = ws.protocol.close_rcvd
            if rcvd is not None:
                self.close_code, self.close_reason = rcvd.code, rcvd.reason
            else:
                self.close_code = ws.close_code

    async def closed(self, within: float = TIMEOUT) -> int | None:
        """The close code the relay sent, once it closed this client."""
        assert self._reader is not None
        async with asyncio.timeout(within):
            await asyncio.shield(self._reader)
        return self.close_code

    @property
    def open(self) -> bool:
        return self._reader is not None and not self._reader.done()

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
            if self._reader is not None:
                with contextlib.suppress(Exception):
                    await self._reader
            self.ws = None

    def state(self) -> dict[str, Any]:
        return {"text": str(self.text), "map": self.map.to_py(), "array": self.array.to_py()}


_tasks: set[asyncio.Task[Any]] = set()


def _spawn(coro: Any) -> None:
    task = asyncio.ensure_future(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


class NodePeers:
    """One ``node client.mjs`` process holding any number of ``WebsocketProvider`` clients."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            ["node", str(NODE_DIR / "client.mjs")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._ids = itertools.count(1)
        self._answers: dict[int, queue.SimpleQueue[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            message = json.loads(line)
            if "id" in message:
                with self._lock:
                    box = self._answers.get(message["id"])
                if box is not None:
                    box.put(message)
            else:
                self.events.append(message)

    async def call(self, op: str, **args: Any) -> Any:
        rid = next(self._ids)
        box: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        with self._lock:
            self._answers[rid] = box
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"id": rid, "op": op, **args}) + "\n")
        self.proc.stdin.flush()
        try:
            answer = await asyncio.to_thread(box.get, timeout=TIMEOUT)
        finally:
            with self._lock:
                del self._answers[rid]
        if "error" in answer:
            raise RuntimeError(f"node client: {answer['error']}")
        return answer.get("result")

    def close_code(self, client: str) -> int | None:
        for event in self.events:
            if event.get("event") == "close" and event.get("client") == client:
                return int(event["code"])
        return None

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class DeviceRelay:
    """A ``kiki-sync-relay`` process on a socket this object holds (a SyncEndpoint)."""

    name = "device"

    def __init__(self, workdir: Path, **settings: str) -> None:
        self.workdir = workdir
        self.state = workdir / "state"
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port: int = self.listener.getsockname()[1]
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("LISTEN_", "NOTIFY_SOCKET", "WATCHDOG_", "KIKI_"))
        }
        self.env.update(
            KIKI_RUNTIME_DIR=str(workdir),
            KIKI_STATE_DIR=str(self.state),
            KIKI_CONFIG_DIR=str(workdir / "etc"),
            KIKI_SYNC_RELAY_DEVICE_ID="test-device",
            **{f"KIKI_SYNC_RELAY_{k.upper()}": v for k, v in settings.items()},
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._key: SigningKey | None = None

    def start(self) -> None:
        src = self.listener.fileno()
        env = dict(self.env, LISTEN_FDS="1", LISTEN_FDNAMES="relay")
        self.starts += 1
        log = open(self.workdir / f"relay-{self.starts}.log", "wb")  # noqa: SIM115
        with log:
            self.proc = subprocess.Popen(
                [
                    "/bin/sh",
                    "-c",
                    'LISTEN_PID=$$; export LISTEN_PID; exec "$0"',
                    str(VENV_BIN / "kiki-sync-relay"),
                ],
                env=env,
                pass_fds=(src, 3),
                preexec_fn=lambda: os.dup2(src, 3),
                stderr=log,
            )
        self.wait_healthy()

    def wait_healthy(self) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                return self.health()
            except (OSError, ValueError):
                if time.monotonic() > deadline or (self.proc and self.proc.poll() is not None):
                    raise
                time.sleep(0.05)

    def health(self) -> dict[str, Any]:
        with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data or not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise ValueError(head[:80])
        result: dict[str, Any] = json.loads(body)
        return result

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        self.proc.wait(timeout=TIMEOUT)
        self.proc = None

    def close(self) -> None:
        self.stop()
        self.listener.close()

    # -- SyncEndpoint ---------------------------------------------------------------------------

    @property
    def key(self) -> SigningKey:
        if self._key is None:
            from libkiki.sync.tokens import KEY_FILE

            self._key = SigningKey.load_or_create(self.state / "sync-relay" / KEY_FILE)
        return self._key

    def url(self, session: str, token: str | None) -> str:
        query = f"?token={token}" if token is not None else ""
        return f"ws://127.0.0.1:{self.port}/session/{session}{query}"

    def token(self, session: str, role: str, *, ttl: float = 3600, sub: str = "test") -> str:
        now = time.time()
        if ttl <= 0:  # already expired, by -ttl seconds
            return self.key.issue(
                session, role, sub=sub, iss="test-device", ttl=60, now=now + ttl - 60
            )
        return self.key.issue(session, role, sub=sub, iss="test-device", ttl=ttl, now=now)

    async def revoke(self, session: str, jti: str) -> None:
        await asyncio.to_thread(
            subprocess.run,
            [str(VENV_BIN / "kiki"), "session", "revoke", session, jti],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=TIMEOUT,
        )

    async def restart(self, *, kill: bool) -> None:
        await asyncio.to_thread(self.stop, kill=kill)
        await asyncio.to_thread(self.start)

    async def show(self, session: str) -> dict[str, Any]:
        """``kiki session show``: the session as the relay's admin channel tells it."""
        done = await asyncio.to_thread(
            subprocess.run,
            [str(VENV_BIN / "kiki"), "session", "show", session],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=TIMEOUT,
        )
        shown: dict[str, Any] = json.loads(done.stdout)
        return shown


# -- the upstream link ---------------------------------------------------------------------------


class Upstream(Protocol):
    """What a device relay links to: another relay or the edge under workerd."""

    def url(self, session: str, token: str | None) -> str: ...
    def token(self, session: str, role: str, *, ttl: float = 3600, sub: str = "test") -> str: ...
    def start(self) -> None: ...
    def stop(self, *, kill: bool = False) -> None: ...


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    """Wait until ``check()`` holds; polled, as it asks a process."""
    async with asyncio.timeout(TIMEOUT):
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def partition_and_heal(
    device: DeviceRelay, upstream: Upstream, session: str, *, kill: bool
) -> None:
    """``session`` of ``device`` is linked to ``upstream``: writes on each end reach the other;
    with the upstream stopped (or killed) the device serves its local clients; once it is back,
    what each side wrote apart reaches the other."""

    async def linked() -> bool:
        return bool((await device.show(session))["upstream"]["linked"])

    async def unlinked() -> bool:
        return not await linked()

    def join(end: DeviceRelay | Upstream, role: str = "controller") -> Awaitable[YClient]:
        return YClient.join(end.url(session, end.token(session, role)))

    local, remote, owner = await join(device), await join(upstream), await join(device, "device")
    local.map["from-device"] = 1
    remote.map["from-edge"] = 1
    owner.doc.get("device", type=Map)["screen"] = "home"  # the device's part goes up as device
    await eventually(lambda: local.state() == remote.state() and len(remote.map) == 2)
    await eventually(lambda: remote.doc.get("device", type=Map).get("screen") == "home")
    await until(linked)

    await asyncio.to_thread(upstream.stop, kill=kill)
    await remote.closed()
    local.map["while-apart"] = 1
    late = await join(device, "observer")
    await eventually(lambda: late.map.get("while-apart") == 1)
    remote.map["offline-at-edge"] = 1
    await until(unlinked)

    await asyncio.to_thread(upstream.start)
    await remote.connect(upstream.url(session, upstream.token(session, "controller")))
    await eventually(lambda: local.state() == remote.state() and len(local.map) == 4)
    await eventually(lambda: late.map.get("offline-at-edge") == 1)
    await until(linked)
    for client in (local, remote, owner, late):
        await client.close()
