"""``kiki up``: the whole constellation on a developer's machine, started the way systemd would.

For every service the supervisor binds its listening socket itself (like a ``.socket`` unit),
then starts the service's console script with the socket at fd 3 (``LISTEN_FDS``,
``LISTEN_PID``, ``LISTEN_FDNAMES``), ``RUNTIME_DIRECTORY``/``STATE_DIRECTORY``, its own
``NOTIFY_SOCKET`` and ``WATCHDOG_USEC``. It waits for ``READY=1`` from each in order, prints a
table when all are ready, restarts a service that exits or stops pinging the watchdog (after
the wait :mod:`libkiki.backoff` decides), and on Ctrl-C or SIGTERM stops them in reverse order
(SIGTERM, then SIGKILL after the stop timeout). With no session bus around it starts a private
``dbus-daemon`` for the services that need one, listening in the runtime directory.

The sockets get what the units give them on a device (``SocketMode=0660``, the services'
``UMask=0027``), with the developer's own user and group (or ``group``) in place of root and
``kiki``: the runtime directory is 0750 and made safe by :mod:`libkiki.private_dir`, so no other
user can connect to anything in it.

The live state is kept in ``<runtime dir>/up.json`` so that ``kiki status`` and tests can find
the pids and addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson

from kiki_cli.launcher import dashboard
from kiki_cli.launcher.demo_keeper import DEMOS, DemoKeeper
from kiki_cli.launcher.process import (
    bus_reachable,
    end_process,
    first_set,
    pipe_lines,
    pre_exec,
    start_private_bus,
)
from kiki_cli.launcher.state import STATE_FILE, read_state
from libkiki import signals
from libkiki.backoff import DEFAULT_STABLE_AFTER, RestartBackoff
from libkiki.constellation import (
    DEFAULT_RELAY_HOST,
    DEFAULT_RELAY_PORT,
    GATEWAY_BUS_NAME,
    GATEWAY_OBJECT_PATH,
    SERVICE_INTERFACE,
    SERVICES,
    ServiceSpec,
)
from libkiki.errors import AddressInUse, KikiError, Unavailable
from libkiki.private_dir import ensure_private_dir
from libkiki.sockets import bind_tcp, bind_unix

log = logging.getLogger(__name__)

BUS_SOCKET = "bus.sock"
# What the units say (SocketMode=, UMask=); the directory keeps out everyone but us and `gid`.
SOCKET_MODE = 0o660
DIRECTORY_MODE = 0o750
SERVICE_UMASK = 0o027
# The shell sets LISTEN_PID to its own pid and execs, so the service sees its own pid there.
_EXEC_SHIM = 'LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"'


@dataclass(frozen=True, slots=True)
class UpConfig:
    runtime_dir: Path
    state_dir: Path
    relay_host: str = DEFAULT_RELAY_HOST
    relay_port: int = DEFAULT_RELAY_PORT
    services: Sequence[ServiceSpec] = SERVICES
    ready_timeout: float = 30.0
    stop_timeout: float = 10.0
    watchdog_sec: float = 20.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    # A process that was ready this long before it ended is restarted after backoff_initial.
    stable_after: float = DEFAULT_STABLE_AFTER
    # The group that may connect to the sockets (default: our own effective group).
    gid: int | None = None
    bin_dir: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    # Start the demo tool provider (kiki_cli.demos.tool_provider) once the broker is ready.
    demo: bool = True
    # The session the sync relay links to the device, whose dashboard URL is printed at the
    # end of the start (None: no link, no dashboard).
    session: str | None = dashboard.DEFAULT_SESSION


@dataclass(eq=False)
class Child:
    spec: ServiceSpec
    listener: socket.socket | None
    address: str | None
    notify: socket.socket
    notify_path: Path
    process: asyncio.subprocess.Process | None = None
    state: str = "starting"
    status: str = ""
    restarts: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    last_ping: float = 0.0
    stopping: bool = False
    backoff: RestartBackoff = field(default_factory=RestartBackoff)


class Supervisor:
    def __init__(self, config: UpConfig, out: TextIO = sys.stdout) -> None:
        self.config = config
        self.out = out
        self.children: list[Child] = []
        self.bus_address: str | None = None
        self._bus_process: asyncio.subprocess.Process | None = None
        self._stop = asyncio.Event()
        self._bin_dir = config.bin_dir or Path(sys.executable).parent
        self._gid = os.getegid() if config.gid is None else config.gid
        self._demos = DemoKeeper(
            config.runtime_dir, self._stop, self._say, self._backoff, config.stop_timeout
        )
        self._dashboard: dashboard.DashboardSetup | None = None

    # -- sockets and environment -----------------------------------------------------------

    def _bind(self) -> None:
        # Every listening socket first: if one is held by someone else we stop before touching
        # anything (notify sockets included) that a running constellation may be using.
        bound: list[tuple[ServiceSpec, socket.socket | None, str | None]] = []
        try:
            for spec in self.config.services:
                listener = None
                address = None
                if spec.socket_file:
                    path = self.config.runtime_dir / spec.socket_file
                    listener = bind_unix(path, mode=SOCKET_MODE)
                    # A socket takes our effective group, not the directory's.
                    os.chown(path, -1, self._gid, follow_symlinks=False)
                    address = str(path)
                elif spec.address is not None:
                    listener = bind_tcp(self.config.relay_host, self.config.relay_port)
                    host, port = listener.getsockname()[:2]
                    address = f"{host}:{port}"
                bound.append((spec, listener, address))
        except BaseException:
            for spec, listener, _ in bound:
                if listener is not None:
                    listener.close()
                if spec.socket_file:
                    (self.config.runtime_dir / spec.socket_file).unlink(missing_ok=True)
            raise
        notify_dir = self.config.runtime_dir / ".notify"
        ensure_private_dir(notify_dir, mode=0o700)
        for spec, listener, address in bound:
            notify_path = notify_dir / spec.name
            notify_path.unlink(missing_ok=True)
            notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            notify.bind(str(notify_path))
            notify.setblocking(False)
            self.children.append(Child(spec, listener, address, notify, notify_path))

    async def _ensure_bus(self) -> None:
        needs_bus = any(spec.session_bus for spec in self.config.services)
        existing = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
        if not needs_bus or bus_reachable(existing):
            self.bus_address = existing
            return
        self._bus_process, self.bus_address = await start_private_bus(
            self.config.runtime_dir / BUS_SOCKET
        )
        self._say(f"started a private session bus: {self.bus_address}")

    def _in_user_session(self) -> bool:
        """Whether the services share the user's own session bus (not one started here), or
        an accessibility bus is named outright."""
        own_bus = self._bus_process is None and self.bus_address is not None
        return own_bus or bool(os.environ.get("AT_SPI_BUS_ADDRESS"))

    def _env(self, child: Child) -> dict[str, str]:
        env = dict(os.environ)
        for key in (
            "LISTEN_PID",
            "LISTEN_FDS",
            "LISTEN_FDNAMES",
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
        ):
            env.pop(key, None)
        if self._dashboard is not None:
            env.update(self._dashboard.env.get(child.spec.name, {}))
        env.update(self.config.extra_env)
        state = self.config.state_dir / child.spec.name
        state.mkdir(parents=True, exist_ok=True)
        env["RUNTIME_DIRECTORY"] = str(self.config.runtime_dir)
        env["STATE_DIRECTORY"] = str(state)
        env["KIKI_RUNTIME_DIR"] = str(self.config.runtime_dir)
        env["NOTIFY_SOCKET"] = str(child.notify_path)
        env["WATCHDOG_USEC"] = str(int(self.config.watchdog_sec * 1_000_000))
        if child.listener is not None:
            env["LISTEN_FDS"] = "1"
            env["LISTEN_FDNAMES"] = child.spec.fdname or child.spec.name
        if self.bus_address:
            env["DBUS_SESSION_BUS_ADDRESS"] = self.bus_address
        return env

    # -- one child's life --------------------------------------------------------------------

    def _command(self, spec: ServiceSpec) -> Path:
        command = self._bin_dir / spec.command
        if command.exists():
            return command
        found = shutil.which(spec.command)
        if found is None:
            raise Unavailable(f"{spec.command} is not installed (run `uv sync`)")
        return Path(found)

    async def _spawn(self, child: Child) -> asyncio.subprocess.Process:
        command = self._command(child.spec)
        fds = [child.listener.fileno()] if child.listener is not None else []
        child.ready.clear()
        child.state = "starting"
        child.last_ping = time.monotonic()
        return await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            _EXEC_SHIM,
            str(command),
            env=self._env(child),
            stdin=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            pass_fds=[*fds, *range(3, 3 + len(fds))],
            preexec_fn=pre_exec(fds, SERVICE_UMASK),
            start_new_session=True,
        )

    async def _read_notify(self, child: Child) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(child.notify, 4096)
            fields = dict(
                line.split("=", 1)
                for line in data.decode(errors="replace").splitlines()
                if "=" in line
            )
            if "STATUS" in fields:
                child.status = fields["STATUS"]
            if fields.get("WATCHDOG") == "1":
                child.last_ping = time.monotonic()
            if fields.get("READY") == "1":
                child.state = "ready"
                child.last_ping = time.monotonic()
                child.backoff.ready(child.last_ping)
                child.ready.set()
                self._write_state()
            if fields.get("STOPPING") == "1":
                child.state = "stopping"
            if fields.get("RELOADING") == "1":
                child.state = "reloading"

    async def _watch(self, child: Child, process: asyncio.subprocess.Process) -> str:
        """Wait until the process exits or misses its watchdog; returns why it ended."""
        watchdog = self.config.watchdog_sec
        while True:
            try:
                async with asyncio.timeout(min(1.0, watchdog / 4)):
                    code = await process.wait()
                return f"exited with status {code}"
            except TimeoutError:
                pass
            if child.state != "stopping" and time.monotonic() - child.last_ping > watchdog:
                # What systemd does on a watchdog timeout: SIGABRT (a core, if enabled), then
                # SIGKILL if that does not end it (a stopped or wedged process ignores it).
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGABRT)
                try:
                    async with asyncio.timeout(self.config.stop_timeout):
                        await process.wait()
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
                return f"missed its watchdog ({watchdog:.0f}s) and was aborted"

    def _backoff(self) -> RestartBackoff:
        cfg = self.config
        return RestartBackoff(cfg.backoff_initial, cfg.backoff_max, cfg.stable_after)

    async def _keep_running(self, child: Child) -> None:
        child.backoff = self._backoff()
        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(self._read_notify(child))
            while not self._stop.is_set():
                child.backoff.started()
                process = await self._spawn(child)
                child.process = process
                assert process.stderr is not None
                logs = tg.create_task(pipe_lines(child.spec.name, process.stderr))
                self._write_state()
                reason = await self._watch(child, process)
                await logs
                if self._stop.is_set() or child.stopping:
                    break
                child.state = "failed"
                child.restarts += 1
                delay = child.backoff.exited(time.monotonic())
                self._say(f"{child.spec.name} {reason}; restarting in {delay:.1f}s")
                self._write_state()
                await first_set(self._stop, within=delay)
            reader.cancel()

    async def _stop_child(self, child: Child) -> None:
        child.stopping = True
        if child.process is not None and child.process.returncode is None:
            if await end_process(child.process, self.config.stop_timeout):
                timeout = self.config.stop_timeout
                self._say(f"{child.spec.name} did not stop in {timeout:.0f}s; killed it")
            child.state = "stopped"

    # -- the whole constellation -------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop as on SIGTERM: the services in reverse order, then the bus (idempotent)."""
        self._stop.set()

    def _say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def state(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "runtimeDir": str(self.config.runtime_dir),
            "stateDir": str(self.config.state_dir),
            "busAddress": self.bus_address,
            "services": {
                c.spec.name: {
                    "pid": c.process.pid if c.process else None,
                    "state": c.state,
                    "status": c.status,
                    "address": c.address,
                    "restarts": c.restarts,
                }
                for c in self.children
            },
        }

    def _write_state(self) -> None:
        path = self.config.runtime_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        with open(os.open(tmp, flags, 0o640), "wb") as f:
            f.write(orjson.dumps(self.state(), option=orjson.OPT_INDENT_2))
        tmp.replace(path)

    def try_this(self) -> str:
        """What to do next, with the environment this constellation needs."""
        kiki = self._bin_dir / "kiki"
        if not kiki.exists():
            kiki = Path("kiki")
        env = f"KIKI_RUNTIME_DIR={self.config.runtime_dir}"
        lines = [
            "in another terminal, try:",
            f"  {env} {kiki} status",
            f"  {env} {kiki} tools list",
            f"  {env} {kiki} a11y dump --text",
            f"  {env} {kiki} a11y find role=button",
            f"  {env} {kiki} sensors list",
            f"  {env} {kiki} sensors watch imu0 --count 20",
            f"  {env} {kiki} tools call dev.kiki.demo.echo text=hello",
            f"  {env} {kiki} tools call dev.kiki.tools.listProviders",
            f"  {env} {kiki} tools log --verify",
        ]
        if self.bus_address:
            lines.append(
                f"  DBUS_SESSION_BUS_ADDRESS={self.bus_address} busctl --user call "
                f"{GATEWAY_BUS_NAME} {GATEWAY_OBJECT_PATH} {SERVICE_INTERFACE} GetInfo"
            )
        return "\n".join(lines)

    def table(self) -> str:
        rows = [("SERVICE", "PID", "STATE", "LISTENS ON", "STATUS")]
        for c in self.children:
            pid = str(c.process.pid) if c.process else "-"
            rows.append((c.spec.name, pid, c.state, c.address or "(session bus)", c.status))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        return "\n".join(
            "  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
            for r in rows
        )

    async def run(self) -> int:
        cfg = self.config
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signals.add_signal_handler(loop, sig, self._stop.set)
        try:
            for where in (cfg.runtime_dir, cfg.state_dir):
                old = ensure_private_dir(where, mode=DIRECTORY_MODE, gid=self._gid)
                if old is not None:
                    self._say(f"narrowed {where} from mode {old:04o} to {DIRECTORY_MODE:04o}")
            if (other := read_state(cfg.runtime_dir)) is not None:
                raise AddressInUse(
                    f"{cfg.runtime_dir} is in use by another running process "
                    f"(kiki up, pid {other['pid']})"
                )
            for spec in cfg.services:
                self._command(spec)
            if cfg.session is not None and any(s.name == "sync-relay" for s in cfg.services):
                self._dashboard = dashboard.prepare(cfg.session, cfg.state_dir, os.getuid())
            self._bind()
            await self._ensure_bus()
            self._say(f"starting {len(self.children)} services in {cfg.runtime_dir}")
            async with asyncio.TaskGroup() as tg:
                for child in self.children:
                    tg.create_task(self._keep_running(child))
                    await self._await_ready(child)
                if not self._stop.is_set():
                    self._write_state()
                    self._say(self.table())
                    self._say(f"all {len(self.children)} services ready; Ctrl-C stops them")
                    for demo in DEMOS if cfg.demo else ():
                        if demo.needs_user_session and not self._in_user_session():
                            continue
                        needed = next(
                            (c for c in self.children if c.spec.name == demo.service), None
                        )
                        if needed is not None and needed.address is not None:
                            await self._demos.start(tg, demo, needed.address, needed.ready)
                    self._say(self.try_this())
                    await self._announce_dashboard()
                await self._stop.wait()
                self._say("stopping")
                await self._demos.stop_all()
                for child in reversed(self.children):
                    await self._stop_child(child)
            return 0
        except KikiError as exc:
            self._say(f"kiki up: {exc}")
            return 1
        finally:
            await self._demos.stop_all()
            for child in reversed(self.children):
                await self._stop_child(child)
            await self._stop_bus()
            self._cleanup()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signals.remove_signal_handler(loop, sig)

    async def _announce_dashboard(self) -> None:
        relay = next((c for c in self.children if c.spec.name == "sync-relay"), None)
        if self._dashboard is None or self.config.session is None or relay is None:
            return
        if not relay.ready.is_set():
            self._say("\n".join(dashboard.not_ready(self.config.session, relay.status)))
            return
        lines = await dashboard.announce(
            self.config.runtime_dir, self.config.session, self._dashboard
        )
        self._say("\n".join(lines))

    async def _await_ready(self, child: Child) -> None:
        await first_set(child.ready, self._stop, within=self.config.ready_timeout)
        if self._stop.is_set():
            return
        if child.ready.is_set():
            self._say(f"  {child.spec.name:<17} ready  {child.status}")
        else:
            self._say(
                f"  {child.spec.name:<17} not ready after {self.config.ready_timeout:.0f}s "
                "(still trying; see its log lines above)"
            )

    async def _stop_bus(self) -> None:
        if self._bus_process is not None:
            await end_process(self._bus_process, 5)
            (self.config.runtime_dir / BUS_SOCKET).unlink(missing_ok=True)

    def _cleanup(self) -> None:
        for child in self.children:
            if child.listener is not None:
                child.listener.close()
            child.notify.close()
            with contextlib.suppress(FileNotFoundError):
                child.notify_path.unlink()
            if child.spec.socket_file:
                with contextlib.suppress(FileNotFoundError):
                    (self.config.runtime_dir / child.spec.socket_file).unlink()
        if self.children:  # only a run that bound its sockets owns the state file
            (self.config.runtime_dir / STATE_FILE).unlink(missing_ok=True)
