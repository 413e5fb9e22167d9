"""Shared fixtures: short socket directories, a private session bus, the repo root."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kikitest import VENV_BIN

TIERS = ("unit", "integration", "system", "interop")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test belongs to exactly one tier (its module's ``pytestmark``), so ``-m unit`` and
    the others select each test once and a new module cannot be left out of every tier."""
    for item in items:
        tiers = {m.name for m in item.iter_markers() if m.name in TIERS}
        if len(tiers) != 1:
            raise pytest.UsageError(
                f"{item.nodeid}: marked {sorted(tiers) or 'with no tier'}; "
                f"mark its module with exactly one of {', '.join(TIERS)}"
            )


# The fixtures live in the kikitest package (tests/ is the only path pytest and mypy add), so
# that no directory needs a conftest.py of its own.
pytest_plugins = [
    "kikitest.broker_fixtures",
    "kikitest.lexicon_fixtures",
    "kikitest.a11y_fixtures",
    "kikitest.sensor_fixtures",
    "kikitest.systemd_fixtures",
    "kikitest.rpc_fixtures",
]


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A fresh directory with a short path (AF_UNIX paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="kiki-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def session_bus() -> Iterator[str]:
    """A private dbus-daemon; yields its address."""
    daemon = shutil.which("dbus-daemon")
    if daemon is None:
        pytest.fail("dbus-daemon is not installed (scripts/install-test-deps installs it)")
    proc = subprocess.Popen(
        [daemon, "--session", "--print-address=1", "--nofork", "--nopidfile"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    address = proc.stdout.readline().strip()
    try:
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def service_env(sockdir: Path) -> dict[str, str]:
    """Environment for running a service by hand in ``sockdir``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LISTEN_", "NOTIFY_SOCKET", "WATCHDOG_", "KIKI_"))
    }
    env.update(
        KIKI_RUNTIME_DIR=str(sockdir),
        KIKI_STATE_DIR=str(sockdir / "state"),
        KIKI_CONFIG_DIR=str(sockdir / "etc"),
        KIKI_LOG_LEVEL="DEBUG",
    )
    env.pop("RUNTIME_DIRECTORY", None)
    env.pop("STATE_DIRECTORY", None)
    return env


class Notifications:
    """The manager side of NOTIFY_SOCKET: collects datagrams from a service."""

    def __init__(self, path: Path) -> None:
        import socket

        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.seen: list[dict[str, str]] = []

    def wait_for(self, key: str, value: str = "1", timeout: float = 20.0) -> dict[str, str]:
        """Block until a message with ``key=value`` arrives (bounded); returns it."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {key}={value} within {timeout}s; saw {self.seen}")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.seen.append(fields)
            if fields.get(key) == value:
                return fields

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def spawn_service(sockdir: Path, service_env: dict[str, str]) -> Iterator[object]:
    """Start a service's console script as systemd would: activated socket, notify socket."""
    import socket

    procs: list[tuple[subprocess.Popen[bytes], Notifications]] = []

    def spawn(
        name: str,
        *,
        listener: socket.socket | None = None,
        fdname: str = "",
        extra_env: dict[str, str] | None = None,
    ) -> tuple[subprocess.Popen[bytes], Notifications]:
        notes = Notifications(sockdir / f"notify-{name}-{len(procs)}")
        env = dict(service_env, NOTIFY_SOCKET=str(notes.path), **(extra_env or {}))
        pass_fds: tuple[int, ...] = ()
        preexec = None
        if listener is not None:
            env.update(LISTEN_FDS="1", LISTEN_FDNAMES=fdname)
            src = listener.fileno()
            pass_fds = (src, 3)

            def preexec() -> None:
                os.dup2(src, 3)

        shim = 'LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"'
        cmd = ["/bin/sh", "-c", shim, str(VENV_BIN / f"kiki-{name}")]
        if listener is None:
            cmd = [str(VENV_BIN / f"kiki-{name}")]
        # stderr goes to a file, not a pipe nobody drains (a chatty service would block on
        # it); proc.stderr reads that file, so a test can still read what the service said.
        log = sockdir / f"stderr-{name}-{len(procs)}"
        with open(log, "wb") as sink:
            proc = subprocess.Popen(
                cmd, env=env, pass_fds=pass_fds, preexec_fn=preexec, stderr=sink
            )
        proc.stderr = open(log, "rb")  # noqa: SIM115 -- closed at teardown
        procs.append((proc, notes))
        return proc, notes

    yield spawn
    for proc, notes in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()
        notes.close()
