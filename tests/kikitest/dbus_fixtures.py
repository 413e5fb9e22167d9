"""Session-wide D-Bus peers for the gateway's tests: one private bus, the broker and the gateway
on it, and the third-party players (mpv with mpv-mpris).

Starting a bus, a broker, a gateway and mpv costs seconds, so they are shared by every test of
a run: tests that change a shared player's state set what they need first. Shared through
:func:`shared` (reference-counted), so a module that imports these fixtures gets the same
processes as every other one, whether or not the root conftest lists this module as a plugin.
The bus has no service directories: nothing is activated behind a test's back (the real
session bus would start dunst or a portal on the first call to its name).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kikitest import VENV_BIN

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""
HOSTILE = Path(__file__).resolve().parents[1] / "services" / "dbus-gateway" / "hostile_player.py"

_shared: dict[str, tuple[int, Any, contextlib.ExitStack]] = {}


@contextlib.contextmanager
def shared(key: str, make: Callable[[contextlib.ExitStack], Any]) -> Iterator[Any]:
    """One ``make(stack)`` per key for all holders; the stack closes when the last one lets go."""
    if key in _shared:
        count, value, stack = _shared[key]
        _shared[key] = (count + 1, value, stack)
    else:
        stack = contextlib.ExitStack()
        try:
            value = make(stack)
        except BaseException:
            stack.close()
            raise
        _shared[key] = (1, value, stack)
    try:
        yield value
    finally:
        count, value, stack = _shared[key]
        if count == 1:
            del _shared[key]
            stack.close()
        else:
            _shared[key] = (count - 1, value, stack)


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def wait_ready(notify: socket.socket, proc: subprocess.Popen[Any], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"{proc.args!r} exited {proc.returncode}: {log.read_text()[-2000:]}"
            )
        notify.settimeout(0.2)
        try:
            data = notify.recv(4096).decode()
        except TimeoutError:
            continue
        if "READY=1" in data.splitlines():
            return
    raise AssertionError(f"{proc.args!r} did not say READY=1: {log.read_text()[-2000:]}")


@dataclass
class Stack:
    """The bus, and (for ``gateway``) a broker and a gateway on it."""

    dir: Path
    address: str
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def tools(self) -> Path:
        return self.dir / "tools.sock"

    def log(self, name: str) -> str:
        return (self.dir / f"{name}.log").read_text(errors="replace")

    def spawn(self, name: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """A service as systemd would run it, once it said READY=1."""
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        path = self.dir / f"notify-{name}"
        path.unlink(missing_ok=True)
        notify.bind(str(path))
        log = self.dir / f"{name}.log"
        env = dict(self.env, NOTIFY_SOCKET=str(path), **(extra_env or {}))
        with open(log, "wb") as sink:
            proc = subprocess.Popen([str(VENV_BIN / f"kiki-{name}")], env=env, stderr=sink)
        try:
            wait_ready(notify, proc, log)
        except BaseException:
            stop(proc)
            raise
        finally:
            notify.close()
        self.procs[name] = proc
        return proc


def start_daemon(stack: contextlib.ExitStack, socket_path: Path, template: str) -> str:
    """A ``dbus-daemon`` listening on ``socket_path`` with the configuration ``template``
    (``{path}`` filled in), stopped with ``stack``; its address."""
    daemon = shutil.which("dbus-daemon")
    if daemon is None:
        pytest.fail("dbus-daemon is not installed (scripts/install-test-deps installs it)")
    config = socket_path.with_suffix(".conf")
    config.write_text(template.format(path=socket_path))
    proc = subprocess.Popen(
        [daemon, f"--config-file={config}", "--print-address=1", "--nofork", "--nopidfile"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    stack.callback(stop, proc)
    assert proc.stdout is not None
    address = proc.stdout.readline().strip()
    assert address, "dbus-daemon printed no address"
    return address


def _bus(stack: contextlib.ExitStack) -> Stack:
    top = Path(tempfile.mkdtemp(prefix="kiki-gw-", dir="/tmp"))
    stack.callback(shutil.rmtree, top, ignore_errors=True)
    address = start_daemon(stack, top / "bus", BUS_CONFIG)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LISTEN_", "NOTIFY_SOCKET", "WATCHDOG_", "KIKI_", "DBUS_", "DISPLAY"))
    }
    home = top / "home"
    home.mkdir()
    env.update(
        DBUS_SESSION_BUS_ADDRESS=address,
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_RUNTIME_DIR=str(top),
        KIKI_RUNTIME_DIR=str(top),
        KIKI_STATE_DIR=str(top / "state"),
        KIKI_CONFIG_DIR=str(top / "etc"),
        KIKI_LOG_LEVEL="DEBUG",
    )
    (top / "etc").mkdir()
    return Stack(top, address, env)


# The gateway (this uid, as every process of the test) is the broker's delegate for D-Bus
# callers; those of this uid may call the media tools and nothing else.
POLICY = """
[[delegate]]
principals = ["uid:{uid}"]

[[allow]]
principals = ["remote:dbus:uid:{uid}"]
tools = ["dev.kiki.media.*", "dev.kiki.notify.*"]
"""


def _gateway(stack: contextlib.ExitStack, gateway_env: dict[str, str] | None = None) -> Stack:
    bus = _bus(stack)
    (bus.dir / "etc" / "tool-policy.toml").write_text(POLICY.format(uid=os.getuid()))
    for name, extra in (
        ("tool-broker", {"KIKI_TOOL_BROKER_CALL_TIMEOUT": "5"}),
        (
            "dbus-gateway",
            {
                "KIKI_DBUS_GATEWAY_CALL_TIMEOUT": "1",
                "KIKI_DBUS_GATEWAY_NOTIFY_OBSERVE_STREAM": "true",
                **(gateway_env or {}),
            },
        ),
    ):
        proc = bus.spawn(name, extra)
        stack.callback(stop, proc)
    return bus


@pytest.fixture(scope="session")
def gateway_stack() -> Iterator[Stack]:
    """A private bus with the real broker and gateway on it (the gateway's calls time out
    after 1 s); shared by the whole run."""
    with shared("gateway", _gateway) as stack:
        yield stack


@pytest.fixture(scope="session")
def bare_bus() -> Iterator[Stack]:
    """A private bus with nothing on it, for tests that put the gateway's parts and their
    peers on a bus of their own; shared by the whole run."""
    with shared("bare-bus", _bus) as stack:
        yield stack


def start_mpv(env: dict[str, str], frequency: int = 440, *extra: str) -> subprocess.Popen[bytes]:
    """mpv playing a generated tone, with Debian's mpv-mpris script (it loads from
    /etc/mpv/scripts): no media file, no audio device, no window."""
    mpv = shutil.which("mpv")
    if mpv is None or not Path("/etc/mpv/scripts/mpris.so").exists():
        pytest.fail("mpv and mpv-mpris are not installed (scripts/install-test-deps)")
    return subprocess.Popen(
        [
            mpv,
            "--no-video",
            "--ao=null",
            "--idle=no",
            "--no-terminal",
            "--loop-playlist=inf",
            *extra,
            f"av://lavfi:sine=frequency={frequency}:duration=3600",
            f"av://lavfi:sine=frequency={frequency * 2}:duration=3600",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture(scope="session")
def mpv_player(gateway_stack: Stack) -> Iterator[subprocess.Popen[bytes]]:
    """One mpv on the gateway's bus (``org.mpris.MediaPlayer2.mpv``), for the whole run."""

    def make(stack: contextlib.ExitStack) -> subprocess.Popen[bytes]:
        proc = start_mpv(gateway_stack.env)
        stack.callback(stop, proc)
        return proc

    with shared("mpv", make) as proc:
        yield proc


@dataclass
class Dunst:
    proc: subprocess.Popen[bytes]
    env: dict[str, str]

    def ctl(self, *args: str) -> str:
        done = subprocess.run(
            ["dunstctl", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        return done.stdout.strip()


def make_dunst(gateway_stack: Stack, stack: contextlib.ExitStack) -> Dunst:
    """dunst, the notification server, under Xvfb on the gateway's bus."""
    if shutil.which("Xvfb") is None or shutil.which("dunst") is None:
        pytest.fail("Xvfb and dunst are not installed (scripts/install-test-deps)")
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", "1", "-nolisten", "tcp", "-screen", "0", "800x600x24"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    stack.callback(stop, xvfb)
    assert xvfb.stdout is not None
    display = xvfb.stdout.readline().strip()
    assert display, "Xvfb printed no display"
    env = dict(gateway_stack.env, DISPLAY=f":{display}")
    config = gateway_stack.dir / "dunstrc"
    config.write_text("[global]\n")  # its defaults; no user configuration
    proc = subprocess.Popen(
        ["dunst", "-conf", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stack.callback(stop, proc)
    server = Dunst(proc, env)
    deadline = time.monotonic() + 20
    while server.ctl("is-paused") not in ("true", "false"):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise AssertionError("dunst did not come on the bus")
        time.sleep(0.05)
    return server


@pytest.fixture(scope="session")
def dunst(gateway_stack: Stack) -> Iterator[Dunst]:
    """dunst under Xvfb on the gateway's bus, for the whole run."""
    with shared("dunst", functools.partial(make_dunst, gateway_stack)) as server:
        yield server


# The portal's "system bus": GLib's GMemoryMonitor (the portal's MemoryMonitor) listens there.
SYSTEM_BUS_CONFIG = BUS_CONFIG.replace("<type>session</type>", "<type>system</type>")
LOW_MEMORY_MONITOR = HOSTILE.with_name("low_memory_monitor.py")


@dataclass
class Portal:
    """xdg-desktop-portal, and the low-memory-monitor on its private system bus."""

    proc: subprocess.Popen[bytes]
    low_memory: subprocess.Popen[str]

    def low_memory_warning(self, level: int) -> None:
        """The system's low-memory-monitor says ``LowMemoryWarning(level)``."""
        assert self.low_memory.stdin is not None
        self.low_memory.stdin.write(f"{level}\n")
        self.low_memory.stdin.flush()


def make_portal(gateway_stack: Stack, stack: contextlib.ExitStack) -> Portal:
    """/usr/libexec/xdg-desktop-portal on the gateway's bus, with no backend installed: the
    frontend's own portals (NetworkMonitor, MemoryMonitor, PowerProfileMonitor, ProxyResolver,
    Trash) and none of those a backend provides (Settings, OpenURI). Its system bus is a private
    ``dbus-daemon`` of its own, where ``low_memory_monitor.py`` owns
    ``org.freedesktop.LowMemoryMonitor``: GLib's memory monitor (GLib 2.74: its ``dbus``
    implementation) follows that name on the system bus and relays its ``LowMemoryWarning`` to
    the portal, which emits its own."""
    exe = Path("/usr/libexec/xdg-desktop-portal")
    if not exe.exists():
        pytest.fail("xdg-desktop-portal is not installed (scripts/install-test-deps)")
    system_address = start_daemon(stack, gateway_stack.dir / "system-bus", SYSTEM_BUS_CONFIG)
    # GIO_USE_PORTALS would make the portal's GLib ask the portal itself.
    env = {k: v for k, v in gateway_stack.env.items() if k != "GIO_USE_PORTALS"}
    env["DBUS_SYSTEM_BUS_ADDRESS"] = system_address
    low_memory = subprocess.Popen(
        [sys.executable, str(LOW_MEMORY_MONITOR)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    stack.callback(stop, low_memory)
    assert low_memory.stdout is not None
    if low_memory.stdout.readline().strip() != "ready":
        raise AssertionError("the low-memory-monitor stand-in did not start")
    proc = subprocess.Popen(
        [str(exe)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    stack.callback(stop, proc)
    deadline = time.monotonic() + 20
    while True:
        done = subprocess.run(
            ["busctl", "--user", "status", "org.freedesktop.portal.Desktop"],
            env=gateway_stack.env,
            capture_output=True,
            timeout=20,
            check=False,
        )
        if done.returncode == 0:
            return Portal(proc, low_memory)
        if time.monotonic() > deadline or proc.poll() is not None:
            raise AssertionError("xdg-desktop-portal did not come on the bus")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def portal(gateway_stack: Stack) -> Iterator[Portal]:
    """xdg-desktop-portal on the gateway's bus (and its low-memory-monitor), for the whole run."""
    with shared("portal", functools.partial(make_portal, gateway_stack)) as value:
        yield value


def start_hostile(env: dict[str, str], name: str, *modes: str) -> subprocess.Popen[str]:
    """The hostile test player (``hostile_player.py``): owns ``org.mpris.MediaPlayer2.<name>``
    and prints ``ready`` once it does; takes commands on stdin (see that file)."""
    proc = subprocess.Popen(
        [sys.executable, str(HOSTILE), name, *modes],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        stop(proc)
        raise AssertionError(f"the hostile player did not start: {line!r}")
    return proc
