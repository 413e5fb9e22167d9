"""`kiki up` runs all six services as systemd would; `kiki status` sees them all.

Runs the real console scripts with a private dbus-daemon (started by `kiki up` itself when no
session bus is there), a relay port picked by the kernel, and short socket paths.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kikitest import VENV_BIN
from libkiki.constellation import SERVICES as DECLARED

pytestmark = pytest.mark.integration

SERVICES = {spec.name for spec in DECLARED}  # every declared service


def read_state(rundir: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((rundir / "up.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return state


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def all_ready(rundir: Path) -> dict[str, Any] | None:
    state = read_state(rundir)
    if (
        state
        and set(state["services"]) == SERVICES
        and all(s["state"] == "ready" for s in state["services"].values())
    ):
        return state
    return None


@pytest.fixture
def constellation(sockdir: Path, service_env: dict[str, str]) -> Iterator[tuple[Any, Path]]:
    env = dict(service_env)
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    env["KIKI_LOG_LEVEL"] = "INFO"
    proc = subprocess.Popen(
        [
            str(VENV_BIN / "kiki"),
            "up",
            "--runtime-dir",
            str(sockdir),
            "--state-dir",
            str(sockdir / "state"),
            "--relay-port",
            "0",
            "--watchdog",
            "5",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield proc, sockdir
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()


def kiki_status(sockdir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "kiki"), "status", "--json", "--runtime-dir", str(sockdir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_up_status_restart_and_clean_stop(
    constellation: tuple[Any, Path], service_env: dict[str, str]
) -> None:
    proc, sockdir = constellation
    state = wait_until(lambda: all_ready(sockdir), 90, "all six services ready")
    assert state["busAddress"], "kiki up should have started a private session bus"

    env = dict(service_env)
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    status = kiki_status(sockdir, env)
    assert status.returncode == 0, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert set(report) == SERVICES
    for name, entry in report.items():
        assert entry["ok"], (name, entry)
        assert entry["info"]["name"] == name
        assert entry["info"]["pid"] == state["services"][name]["pid"]

    # The demo provider's tools are on the broker and answer.
    def demo_echo() -> dict[str, Any] | None:
        result = subprocess.run(
            [
                str(VENV_BIN / "kiki"),
                "tools",
                "--socket",
                str(sockdir / "tools.sock"),
                "call",
                "dev.kiki.demo.echo",
                "text=hello",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return json.loads(result.stdout) if result.returncode == 0 else None

    echoed = wait_until(demo_echo, 60, "the demo provider's echo tool")
    assert echoed["text"] == "hello"
    assert echoed["caller"]["uid"] == os.getuid()

    def kiki(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(VENV_BIN / "kiki"), *args],
            env={**env, "KIKI_RUNTIME_DIR": str(sockdir)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    # The a11y demo app published its window and reacts to actions as an app would.
    def find(*criteria: str) -> list[dict[str, Any]]:
        found = kiki("a11y", "find", *criteria, "--json")
        return list(json.loads(found.stdout)["nodes"]) if found.returncode == 0 else []

    save = wait_until(lambda: find("role=button", "name=Save")[:1], 60, "the demo's Save")[0]
    refused = kiki("a11y", "act", save["ref"], "press")
    assert (refused.returncode, refused.stderr) == (1, "kiki a11y: the Name field is empty\n")
    name = find("role=textField", "name=Name")[0]
    assert kiki("a11y", "act", name["ref"], "setValue", "Grace Hopper").returncode == 0
    assert kiki("a11y", "act", save["ref"], "press").returncode == 0
    assert wait_until(lambda: find("role=listItem", "name=Grace Hopper"), 30, "a new list item")
    # The sensor publisher lists the kernel's and the synthetic IMU's sensors.
    listed = kiki("sensors", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    sensors = {s["id"]: s for s in json.loads(listed.stdout)}
    assert sensors["imu0"]["rateHz"] == 1000
    assert "memory" in sensors

    # A crashed service is restarted and becomes ready again.
    victim = state["services"]["tool-broker"]["pid"]
    os.kill(victim, signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        s = read_state(sockdir)
        if not s:
            return None
        tb = s["services"]["tool-broker"]
        return s if tb["pid"] != victim and tb["state"] == "ready" and tb["restarts"] == 1 else None

    wait_until(restarted, 60, "tool-broker restarted")
    assert kiki_status(sockdir, env).returncode == 0
    # The demo provider lost its broker connection with it (and exited 1); it is started again
    # and its tools answer on the new broker.
    echoed = wait_until(demo_echo, 60, "the demo provider's echo tool on the restarted broker")
    assert echoed["text"] == "hello"

    # SIGTERM stops everything in reverse order and exits 0, leaving no sockets behind.
    pids = [s["pid"] for s in (read_state(sockdir) or {})["services"].values()]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    output = proc.stdout.read()
    assert "all 6 services ready" in output
    assert "started the demo provider" in output
    assert "started the demo app" in output
    # It ends its start with the dashboard of the session its relay links to the device.
    assert (
        f"  http://{state['services']['sync-relay']['address']}/dashboard/#session=local&token="
        in output
    )
    assert "tool-broker exited with status -9; restarting" in output
    assert "demo exited with status 1; restarting" in output
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not list(sockdir.glob("*.sock"))
    assert not (sockdir / "up.json").exists()


def test_status_reports_services_that_are_down(sockdir: Path, service_env: dict[str, str]) -> None:
    result = kiki_status(sockdir, service_env)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["tool-broker"]["ok"] is False
    assert report["tool-broker"]["error"]["type"] == "Unavailable"
    assert "No such file or directory" in report["tool-broker"]["error"]["message"]


def test_up_refuses_when_another_instance_holds_the_sockets(
    constellation: tuple[Any, Path], service_env: dict[str, str]
) -> None:
    _, sockdir = constellation
    wait_until(lambda: all_ready(sockdir), 90, "all six services ready")
    second = subprocess.run(
        [
            str(VENV_BIN / "kiki"),
            "up",
            "--runtime-dir",
            str(sockdir),
            "--relay-port",
            "0",
            "--state-dir",
            str(sockdir / "state2"),
        ],
        env=service_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == 1
    assert "in use by another running process" in second.stdout
    assert all_ready(sockdir)


def test_services_do_not_outlive_a_killed_supervisor(constellation: tuple[Any, Path]) -> None:
    proc, sockdir = constellation
    state = wait_until(lambda: all_ready(sockdir), 90, "all six services ready")
    proc.kill()  # SIGKILL: kiki up gets no chance to stop anything itself
    proc.wait(timeout=30)

    def all_gone() -> bool:
        for service in state["services"].values():
            try:
                os.kill(service["pid"], 0)
            except ProcessLookupError:
                continue
            return False
        return True

    wait_until(all_gone, 30, "every service to exit after its supervisor died")


def test_a_hung_service_is_restarted_by_the_watchdog(
    sockdir: Path, service_env: dict[str, str]
) -> None:
    proc = subprocess.Popen(
        [
            str(VENV_BIN / "kiki"),
            "up",
            "a11y-server",
            "--runtime-dir",
            str(sockdir),
            "--state-dir",
            str(sockdir / "state"),
            "--watchdog",
            "2",
            "--no-demo",
        ],
        env=service_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def ready() -> dict[str, Any] | None:
            state = read_state(sockdir)
            if state and state["services"]["a11y-server"]["state"] == "ready":
                return state
            return None

        hung = wait_until(ready, 60, "a11y-server ready")["services"]["a11y-server"]["pid"]
        os.kill(hung, signal.SIGSTOP)  # alive, but no more WATCHDOG=1

        def replaced() -> bool:
            state = read_state(sockdir)
            service = state["services"]["a11y-server"] if state else {}
            return service.get("pid") not in (None, hung) and service.get("state") == "ready"

        wait_until(replaced, 60, "the hung a11y-server replaced")
        with pytest.raises(ProcessLookupError):
            os.kill(hung, 0)
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0
        assert proc.stdout is not None
        output = proc.stdout.read()
        proc.stdout.close()
    assert "a11y-server missed its watchdog (2s) and was aborted" in output


def _processes_in(rundir: Path) -> list[int]:
    """Processes whose environment names ``rundir`` as their Kiki runtime directory."""
    needle = f"KIKI_RUNTIME_DIR={rundir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:  # gone meanwhile, or not ours to read
                continue
    return found


def test_up_whose_reader_goes_away_stops_its_services_in_order(
    sockdir: Path, service_env: dict[str, str], tmp_path: Path
) -> None:
    # `kiki up | head -1`: the write after the first line fails; the services it started are
    # stopped and their sockets removed, as on SIGTERM, and then it ends as cat does.
    env = dict(service_env)
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    read, write = os.pipe()
    with (tmp_path / "stderr").open("wb") as err:
        proc = subprocess.Popen(
            [
                str(VENV_BIN / "kiki"),
                "up",
                "tool-broker",
                "--no-demo",
                "--runtime-dir",
                str(sockdir),
                "--state-dir",
                str(sockdir / "state"),
            ],
            env=env,
            stdout=write,
            stderr=err,
        )
    os.close(write)
    try:
        with os.fdopen(read, "rb") as reader:
            assert reader.readline().startswith(b"starting 1 services")
    finally:
        status = proc.wait(timeout=60)
    assert status == -signal.SIGPIPE
    assert "Traceback" not in (tmp_path / "stderr").read_text()
    assert not list(sockdir.glob("*.sock"))
    assert not (sockdir / "up.json").exists()
    assert _processes_in(sockdir) == []
