"""A real desktop session for the AT-SPI bridge's tests, shared by the whole test session.

``atspi_desktop`` starts, once: Xvfb, a private session dbus-daemon, at-spi-bus-launcher (the
accessibility bus and, activated by it, the AT-SPI registry), gtk3-widget-factory, a
kiki-a11y-server and kiki-atspi-bridge, and waits until the factory's tree is in the server.
Tests that add apps of their own start them with :meth:`AtspiDesktop.start_app`.

Import the fixture into a test module (``from kikitest.atspi_fixtures import atspi_desktop``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from kikitest import VENV_BIN
from libkiki.a11y.client import A11yClient, Mirror, MirrorTree

PROGRAMS = ("Xvfb", "dbus-daemon", "gtk3-widget-factory")
LAUNCHER = Path("/usr/libexec/at-spi-bus-launcher")
WITHIN = 30.0  # seconds any one peer has to come up


@dataclass
class AtspiDesktop:
    root: Path
    env: dict[str, str]  # DISPLAY, the session bus, XDG_RUNTIME_DIR, KIKI_RUNTIME_DIR
    a11y_address: str
    socket: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    bridge: subprocess.Popen[bytes] | None = None

    def start_app(self, *argv: str) -> subprocess.Popen[bytes]:
        """Start a GTK app on this desktop, its accessibility on (GTK's atk-bridge)."""
        log = open(self.root / f"{Path(argv[0]).name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(list(argv), env=self.app_env(), stdout=log, stderr=log)
        log.close()
        self.procs.append(proc)
        return proc

    def app_env(self) -> dict[str, str]:
        unset = ("NO_AT_BRIDGE", "GTK_A11Y", "GTK_MODULES")  # GTK_MODULES=gail:atk-bridge
        # would load a second bridge into Chromium, whose web pages then stay out of AT-SPI
        env = {k: v for k, v in os.environ.items() if k not in unset}
        env.update(self.env, GDK_BACKEND="x11")  # GTK 3 loads its atk-bridge by itself
        return env

    @contextlib.asynccontextmanager
    async def tree_of(
        self, label: str, within: float = WITHIN
    ) -> AsyncIterator[tuple[A11yClient, MirrorTree]]:
        """A subscribed client and the tree of the app labelled ``label``, once it is there."""
        async with A11yClient(self.socket) as client:
            await client.subscribe()
            # Its details too: from the cache the structure comes first, then the rest.
            tree = await client.wait_for(lambda m: filled(tree_labelled(m, label)), timeout=within)
            yield client, tree


def filled(tree: MirrorTree | None) -> MirrorTree | None:
    """The tree once its details are in (some node has bounds: they come in one update, after
    the structure alone when that is read from the cache), else None."""
    return tree if tree is not None and any(n.bounds for n in tree.nodes.values()) else None


def tree_labelled(mirror: Mirror, label: str) -> MirrorTree | None:
    """The (non-empty) tree of the app labelled ``label`` in a client's mirror."""
    return next((t for t in mirror if t.app.label == label and t.nodes), None)


@dataclass(frozen=True)
class AtspiNode:
    """One accessible as AT-SPI answers when asked one call at a time (as pyatspi asks)."""

    path: str
    role: int
    role_name: str
    name: str
    state_words: tuple[int, ...]
    text: str

    @property
    def checked(self) -> bool:
        return bool(self.state_words[0] & (1 << 4))  # ATSPI_STATE_CHECKED


async def independent_nodes(address: str, label: str) -> list[AtspiNode]:
    """Walk the app labelled ``label`` with plain D-Bus calls, one at a time, depth first.

    Written apart from the bridge (its reference in the tests, and the benchmark's floor)."""
    bus = await MessageBus(bus_address=address).connect()
    try:

        async def ask(
            dest: str,
            path: str,
            iface: str,
            member: str,
            sig: str = "",
            body: list[Any] | None = None,
        ) -> Any:
            reply = await bus.call(
                Message(
                    destination=dest,
                    path=path,
                    interface=iface,
                    member=member,
                    signature=sig,
                    body=body or [],
                )
            )
            assert reply is not None
            if reply.message_type == MessageType.ERROR:
                return None
            return reply.body[0]

        acc = "org.a11y.atspi.Accessible"
        props = "org.freedesktop.DBus.Properties"
        root = "/org/a11y/atspi/accessible/root"
        for dest, _ in await ask("org.a11y.atspi.Registry", root, acc, "GetChildren"):
            name = await ask(dest, root, props, "Get", "ss", [acc, "Name"])
            if name is not None and name.value == label:
                break
        else:
            raise AssertionError(f"no app {label!r} in the registry")
        out: list[AtspiNode] = []
        stack = [root]
        while stack:
            path = stack.pop()
            role = await ask(dest, path, acc, "GetRole")
            role_name = await ask(dest, path, acc, "GetRoleName")
            name = await ask(dest, path, props, "Get", "ss", [acc, "Name"])
            states = await ask(dest, path, acc, "GetState")
            children = await ask(dest, path, acc, "GetChildren")
            text = await ask(dest, path, "org.a11y.atspi.Text", "GetText", "ii", [0, -1])
            if role is None:
                continue  # gone meanwhile
            out.append(AtspiNode(path, role, role_name, name.value, tuple(states), text or ""))
            stack.extend(p for d, p in reversed(children) if d == dest)
        return out
    finally:
        bus.disconnect()


async def set_texts(address: str, path: str, texts: list[str]) -> None:
    """``EditableText.SetTextContents`` of each text on ``path`` (of the one app holding it),
    all sent before any answer is awaited."""
    bus = await MessageBus(bus_address=address).connect()
    try:
        owner = await bus.call(
            Message(destination="org.a11y.atspi.Registry", path="/org/a11y/atspi/accessible/root",
                    interface="org.a11y.atspi.Accessible", member="GetChildren")
        )  # fmt: skip
        assert owner is not None
        for dest, _ in owner.body[0]:
            probe = await bus.call(
                Message(destination=dest, path=path, interface="org.a11y.atspi.Text",
                        member="GetText", signature="ii", body=[0, -1])
            )  # fmt: skip
            if probe is not None and probe.message_type != MessageType.ERROR:
                break
        calls = [
            bus.call(
                Message(
                    destination=dest,
                    path=path,
                    interface="org.a11y.atspi.EditableText",
                    member="SetTextContents",
                    signature="s",
                    body=[text],
                )
            )
            for text in texts
        ]
        await asyncio.gather(*calls)
    finally:
        bus.disconnect()


FORM = """<!doctype html><html><head><title>Kiki form</title></head><body>
<form id="f"><label for="name">Full name</label> <input id="name" type="text">
<label><input id="news" type="checkbox"> Newsletter</label> <button type="submit">Send</button>
</form><p role="status" id="out">Waiting</p>
<script>
document.getElementById("f").addEventListener("submit", (event) => {
  event.preventDefault();
  const news = document.getElementById("news").checked ? " with news" : "";
  document.getElementById("out").textContent =
    "Submitted " + document.getElementById("name").value + news;
});
</script></body></html>
"""


@pytest.fixture(scope="session")
def chromium_form(atspi_desktop: AtspiDesktop) -> Iterator[subprocess.Popen[bytes]]:
    """Chromium on the desktop, accessibility on, showing a local form whose own script says
    what was submitted (in its status line)."""
    browser = shutil.which("chromium")
    if browser is None:
        pytest.fail("chromium is not installed (scripts/install-test-deps installs it)")
    page = atspi_desktop.root / "form.html"
    page.write_text(FORM)
    argv = [
        browser,
        "--force-renderer-accessibility",
        f"--user-data-dir={atspi_desktop.root / 'chromium'}",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-gpu",
        "--disable-extensions",
        "--password-store=basic",
        *(["--no-sandbox"] if os.geteuid() == 0 else []),  # its sandbox refuses root
        page.as_uri(),
    ]
    proc = atspi_desktop.start_app(*argv)
    try:
        yield proc
    finally:
        _stop(proc)


def _start_xvfb(log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Xvfb on a free display, once it accepts connections (``-displayfd``: it writes the
    display's number when ready; its socket file exists before it listens). The number is
    drawn from a high range: other jobs on this machine take the low ones, some by
    ``-displayfd`` alone; one taken meanwhile makes Xvfb exit, and another is tried."""
    rng = random.Random()
    for _ in range(20):
        number = rng.randrange(100, 1000)
        if Path(f"/tmp/.X{number}-lock").exists() or Path(f"/tmp/.X11-unix/X{number}").exists():
            continue
        read, write = os.pipe()
        with log.open("ab") as out:
            proc = subprocess.Popen(
                ["Xvfb", f":{number}", "-displayfd", str(write), "-nolisten", "tcp",
                 "-noreset", "-screen", "0", "1280x1024x24"],
                pass_fds=(write,),
                stdout=out,
                stderr=out,
            )  # fmt: skip
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            ready = pipe.readline().strip()  # b"" if Xvfb exits instead
        if ready == str(number).encode() and proc.poll() is None:
            return proc, number
        _stop(proc)
    raise AssertionError("Xvfb did not start on any display tried")


def _wait(check: object, what: str, within: float = WITHIN) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {within:g} s: {what}")


def _connectable(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def _bus_address(env: dict[str, str]) -> str:
    out = subprocess.run(
        ["busctl", f"--address={env['DBUS_SESSION_BUS_ADDRESS']}", "call", "org.a11y.Bus",
         "/org/a11y/bus", "org.a11y.Bus", "GetAddress"],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    return out.stdout.split('"')[1] if out.returncode == 0 and '"' in out.stdout else ""


def _registry_apps(address: str) -> int:
    out = subprocess.run(
        ["busctl", f"--address={address}", "get-property", "org.a11y.atspi.Registry",
         "/org/a11y/atspi/accessible/root", "org.a11y.atspi.Accessible", "ChildCount"],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    return int(out.stdout.split()[-1]) if out.returncode == 0 else 0


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)  # a test may have stopped it
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def atspi_desktop() -> Iterator[AtspiDesktop]:
    missing = [p for p in PROGRAMS if shutil.which(p) is None]
    if missing or not LAUNCHER.exists():
        pytest.fail(
            f"not installed: {missing or LAUNCHER} (scripts/install-test-deps installs them)"
        )
    root = Path(tempfile.mkdtemp(prefix="kiki-atspi-", dir="/tmp"))
    runtime = root / "run"
    runtime.mkdir(mode=0o700)
    kiki_dir = root / "kiki"
    kiki_dir.mkdir(mode=0o700)
    procs: list[subprocess.Popen[bytes]] = []
    desktop: AtspiDesktop | None = None
    try:
        xvfb, display = _start_xvfb(root / "xvfb.log")
        procs.append(xvfb)
        bus_path = root / "bus"
        procs.append(
            subprocess.Popen(
                ["dbus-daemon", "--session", "--nofork", "--nopidfile",
                 f"--address=unix:path={bus_path}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
        _wait(lambda: _connectable(bus_path), "the session bus")
        base = {k: v for k, v in os.environ.items() if not k.startswith(("KIKI_", "AT_SPI"))}
        env = dict(
            DISPLAY=f":{display}",
            DBUS_SESSION_BUS_ADDRESS=f"unix:path={bus_path}",
            XDG_RUNTIME_DIR=str(runtime),
            KIKI_RUNTIME_DIR=str(kiki_dir),
        )
        full = {**base, **env}
        procs.append(
            subprocess.Popen(
                [str(LAUNCHER)], env=full, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
        _wait(lambda: _bus_address(full), "org.a11y.Bus on the session bus")
        a11y_address = _bus_address(full)
        desktop = AtspiDesktop(root, env, a11y_address, kiki_dir / "a11y.sock", procs)
        desktop.start_app("gtk3-widget-factory")
        try:
            _wait(lambda: _registry_apps(a11y_address) >= 1, "gtk3-widget-factory in the registry")
        except AssertionError as exc:
            log = (root / "gtk3-widget-factory.log").read_text(errors="replace")
            xvfb_log = (root / "xvfb.log").read_text(errors="replace")
            raise AssertionError(
                f"{exc}; its output: {log[-2000:]}; Xvfb's (alive: {xvfb.poll() is None}): "
                f"{xvfb_log[-2000:]}"
            ) from None
        # The bridge (this user's) may name the app each tree is for, as a session's policy
        # would let its kiki-atspi-bridge do.
        policy = root / "a11y-policy.toml"
        policy.write_text(f'[[publisher]]\nprincipals = ["uid:{os.getuid()}"]\n')
        server_env = dict(
            full,
            KIKI_A11Y_SERVER_BROKER_TOOLS="false",
            KIKI_LOG_LEVEL="WARNING",
            KIKI_A11Y_SERVER_POLICY_FILE=str(policy),
        )
        procs.append(subprocess.Popen([str(VENV_BIN / "kiki-a11y-server")], env=server_env))
        _wait(lambda: _connectable(desktop.socket), "the a11y-server's socket")
        desktop.bridge = subprocess.Popen(
            [str(VENV_BIN / "kiki-atspi-bridge"), "--timeout", "1", "--gone-after", "3"],
            env=dict(full, KIKI_LOG_LEVEL="INFO"),
        )
        procs.append(desktop.bridge)

        async def factory_published() -> None:
            assert desktop is not None
            async with desktop.tree_of("gtk3-widget-factory"):
                pass

        asyncio.run(factory_published())
        yield desktop
    finally:
        for proc in reversed(desktop.procs if desktop else procs):
            _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


SYSTEM_PYTHON = Path("/usr/bin/python3")  # Debian's python3-pyatspi lives there, not in the venv

# Runs under the system Python. Walks the app labelled argv[1] with pyatspi as a screen reader
# reads it (role, name, description, states, interfaces, bounds where Component, text where
# Text, children),
# ``argv[2]`` times in one process, and prints one JSON line: the nodes of the first walk and
# every walk's time (the first is what a new client pays; libatspi caches what it has read).
_PYATSPI_WALK = r"""
import json, sys, time
import pyatspi

label, walks = sys.argv[1], int(sys.argv[2])
desktop = pyatspi.Registry.getDesktop(0)
app = next(a for a in desktop if a is not None and a.name == label)

def walk(app):
    out = []
    stack = [(app, 0)]
    while stack:
        acc, depth = stack.pop()
        try:
            role = acc.getRoleName()
            name, description = acc.name, acc.description
            states = sorted(int(s) for s in acc.getState().getStates())
            interfaces = pyatspi.listInterfaces(acc)
            bounds = None
            if "Component" in interfaces:
                e = acc.queryComponent().getExtents(pyatspi.DESKTOP_COORDS)
                bounds = [e.x, e.y, e.width, e.height]
            text = acc.queryText().getText(0, -1) if "Text" in interfaces else ""
            children = [acc.getChildAtIndex(i) for i in range(acc.childCount)]
        except Exception:
            continue  # gone meanwhile
        path = acc.path
        out.append({"path": path, "depth": depth, "role": role, "name": name,
                    "description": description, "states": states, "bounds": bounds,
                    "text": text})
        stack.extend((c, depth + 1) for c in reversed(children) if c is not None)
    return out

times, first = [], None
for _ in range(walks):
    t = time.perf_counter()
    nodes = walk(app)
    times.append(time.perf_counter() - t)
    first = first if first is not None else nodes
print(json.dumps({"nodes": first, "times": times}))
"""


@dataclass(frozen=True)
class PyatspiWalk:
    # In walk order (depth first, children in order): path, depth (the app's is 0), role (its
    # name), name, description, states, bounds, text
    nodes: list[dict[str, Any]]
    times: list[float]  # seconds per walk, in order (the first in a fresh process)


def pyatspi_walk(desktop: AtspiDesktop, label: str, walks: int = 1) -> PyatspiWalk:
    """The app labelled ``label`` read by pyatspi (Debian's, under the system Python) in a
    process of its own: the AT-SPI client the bridge is measured against, and an independent
    reader for the tests."""
    if (
        not SYSTEM_PYTHON.exists()
        or subprocess.run(
            [str(SYSTEM_PYTHON), "-c", "import pyatspi"], capture_output=True, check=False
        ).returncode
    ):
        pytest.fail("pyatspi is not installed for /usr/bin/python3 (scripts/install-test-deps)")
    env = dict(desktop.app_env(), AT_SPI_BUS_ADDRESS=desktop.a11y_address)
    done = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", _PYATSPI_WALK, label, str(walks)],
        env=env,
        capture_output=True,
        check=False,
        timeout=120,
    )
    if done.returncode:
        raise AssertionError(f"the pyatspi walk failed: {done.stderr.decode(errors='replace')}")
    got = json.loads(done.stdout.decode().splitlines()[-1])
    return PyatspiWalk(got["nodes"], got["times"])


# Runs under the system Python: pyatspi's own event listener. Prints "ready" once registered,
# then one line per inserted text: the CLOCK_MONOTONIC time it heard it (time.monotonic, the
# same clock in every process) and the text.
_PYATSPI_LISTEN = r"""
import sys, time
import pyatspi

def heard(event):
    print(f"{time.monotonic()!r} {event.any_data}", flush=True)

pyatspi.Registry.registerEventListener(heard, "object:text-changed:insert")
print("ready", flush=True)
pyatspi.Registry.start()
"""


def pyatspi_listener(desktop: AtspiDesktop) -> subprocess.Popen[str]:
    """pyatspi listening for inserted text on the desktop, in a process of its own (its
    stdout: "ready", then "<monotonic time> <text>" per insert). The caller stops it."""
    env = dict(desktop.app_env(), AT_SPI_BUS_ADDRESS=desktop.a11y_address)
    proc = subprocess.Popen(
        [str(SYSTEM_PYTHON), "-c", _PYATSPI_LISTEN], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        proc.wait()
        raise AssertionError("pyatspi's listener did not start")
    return proc
