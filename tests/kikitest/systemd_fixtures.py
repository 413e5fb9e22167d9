"""A real systemd booted with systemd-nspawn over this machine, with Kiki installed by the image's
own install script: one container per test session, shared by every module of the system tier
that drives units (``tests/units``). Booting it, building the wheelhouse and installing cost a
minute or more on a busy machine; a module of its own would pay that again.

The container gets a throw-away root and /usr (``--volatile=yes --overlay=/usr::/usr``), the
checkout at /src and a wheelhouse at /wheelhouse, and a network namespace of its own with only
loopback (``--private-network``): its relay socket binds 127.0.0.1:8765 whatever holds that port
on the host, such as a developer's own ``./dev up``.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kikitest import REPO
from libkiki.constellation import DEFAULT_RELAY_PORT

__all__ = ["RELAY_PORT", "Machine", "host_relay_port", "machine"]

RELAY_PORT = DEFAULT_RELAY_PORT


class Machine:
    """A booted container, driven with nsenter (there is no machined registration)."""

    def __init__(self, nspawn: subprocess.Popen[bytes], leader: int, log: Path) -> None:
        self.nspawn = nspawn
        self.leader = leader
        self.log = log

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 120, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        prefix = ["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-n", "-p", "--"]
        if env:
            prefix += ["env", *(f"{k}={v}" for k, v in env.items())]
        result = subprocess.run(
            [*prefix, *cmd], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def journal(self, *units: str, lines: int = 40) -> str:
        """The last ``lines`` of the journal of ``units`` (globs allowed), for a failure's
        message."""
        where = [arg for unit in units for arg in ("-u", unit)]
        return self.run("journalctl", "--no-pager", "-n", str(lines), *where, check=False).stdout

    def systemctl(self, *args: str, check: bool = True) -> str:
        return self.run("systemctl", *args, check=check).stdout.strip()

    def prop(self, unit: str, name: str) -> str:
        return self.systemctl("show", "-p", name, "--value", unit)

    def wait_for(self, what: str, predicate: object, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():  # type: ignore[operator]
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _leader(nspawn_pid: int, timeout: float = 30) -> int:
    """The host pid of the container's systemd (the child of systemd-nspawn)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{nspawn_pid}/task/{nspawn_pid}/children")
        if children.exists():
            for pid in children.read_text().split():
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
        time.sleep(0.1)
    raise AssertionError("systemd-nspawn did not start the container's systemd")


@pytest.fixture(scope="session")
def host_relay_port() -> Iterator[None]:
    """127.0.0.1:8765 held on the host for as long as the container runs.

    Whatever already holds it (a developer's ``./dev up``) may keep it; otherwise this fixture
    listens on it, so that the container's relay socket must bind beside a taken host port.
    """
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        holder.bind(("127.0.0.1", RELAY_PORT))
        holder.listen(1)
    except OSError as exc:
        holder.close()
        if exc.errno != errno.EADDRINUSE:
            raise
    try:
        yield
    finally:
        holder.close()


@pytest.fixture(scope="session")
def machine(tmp_path_factory: pytest.TempPathFactory, host_relay_port: None) -> Iterator[Machine]:
    missing = [t for t in ("systemd-nspawn", "nsenter") if shutil.which(t) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not installed: apt-get install systemd-container "
            "(scripts/install-test-deps does)"
        )
    if os.geteuid() != 0:
        pytest.fail("the system tier boots a container and needs root")
    work = tmp_path_factory.mktemp("system")
    wheels = work / "wheelhouse"
    uv = REPO / ".tools" / "bin" / "uv"
    env = dict(os.environ, UV=str(uv if uv.exists() else shutil.which("uv") or "uv"))
    subprocess.run(
        [str(REPO / "image" / "build-wheelhouse.sh"), str(wheels)], env=env, check=True, timeout=600
    )
    log = work / "nspawn.log"
    name = f"kiki-test-{os.getpid()}"
    with log.open("wb") as out:
        nspawn = subprocess.Popen(
            [
                "systemd-nspawn",
                "--quiet",
                "--directory=/",
                "--volatile=yes",
                "--overlay=/usr::/usr",
                "--boot",
                "--register=no",
                "--keep-unit",
                # Loopback only, its own: the container's sockets never meet the host's ports.
                "--private-network",
                f"--machine={name}",
                "--bind-ro=/dev/null:/etc/systemd/system/systemd-firstboot.service",
                # The volatile root has an empty /etc; user@.service needs the PAM stack.
                "--bind-ro=/etc/pam.d",
                "--bind-ro=/etc/security",
                f"--bind-ro={REPO}:/src",
                f"--bind-ro={wheels}:/wheelhouse",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        m = Machine(nspawn, _leader(nspawn.pid), log)
        # systemctl cannot connect until the container's systemd has its private socket.
        deadline = time.monotonic() + 120
        while True:
            state = m.run("systemctl", "is-system-running", "--wait", check=False, timeout=120)
            if state.stdout.strip() in ("running", "degraded"):
                break
            assert time.monotonic() < deadline, state.stdout + state.stderr + log.read_text()
            time.sleep(0.2)
        m.run("/src/image/install.sh", "/src", "/wheelhouse", timeout=600)
        m.run("systemd-sysusers")
        m.run("systemd-tmpfiles", "--create", "/usr/lib/tmpfiles.d/kiki.conf")
        m.systemctl("daemon-reload")
        m.systemctl("start", "kiki.target")
        yield m
    finally:
        nspawn.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to power off
        try:
            nspawn.wait(timeout=60)
        except subprocess.TimeoutExpired:
            nspawn.kill()
            nspawn.wait(timeout=30)
