"""Kiki's units under a real systemd, booted with systemd-nspawn over this machine (the session's
container, ``kikitest.systemd_fixtures``: Kiki installed with ``image/install.sh``, the image's
own install script); everything is checked through ``systemctl``.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import socket
import subprocess
from typing import Any

import pytest

from kikitest import REPO
from kikitest.systemd_fixtures import Machine
from libkiki.constellation import (
    DEFAULT_RELAY_PORT,
    GATEWAY_BUS_NAME,
    GATEWAY_OBJECT_PATH,
    SERVICE_INTERFACE,
    SERVICES,
)

pytestmark = pytest.mark.system

SYSTEM_SERVICES = tuple(s.name for s in SERVICES if not s.session_bus)
RELAY_PORT = DEFAULT_RELAY_PORT
USER_ENV = {
    "XDG_RUNTIME_DIR": "/run/user/0",
    "DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/0/bus",
}
THRESHOLDS = {
    "kiki-tool-broker.service": 1.0,
    "kiki-sensor-publisher.service": 1.0,
    "kiki-sync-relay.service": 1.5,
    "kiki-a11y-server.service": 2.5,
    "kiki-dbus-gateway.service": 2.5,
    "kiki-atspi-bridge.service": 2.5,
    "kiki-updater.service": 4.0,
}


def test_every_socket_listens(machine: Machine) -> None:
    for name in SYSTEM_SERVICES:
        assert machine.systemctl("is-active", f"kiki-{name}.socket") == "active"
    for sock in ("tools", "a11y", "sensors", "updater"):
        machine.run("test", "-S", f"/run/kiki/{sock}.sock")
    mode = machine.run("stat", "-c", "%a %G", "/run/kiki/tools.sock").stdout.split()
    assert mode == ["660", "kiki"]


def test_first_connection_starts_each_service_and_all_become_ready(machine: Machine) -> None:
    for name in SYSTEM_SERVICES:
        assert machine.systemctl("is-active", f"kiki-{name}.service", check=False) != "active", (
            f"kiki-{name}.service ran before anyone connected"
        )
    # Five Python services starting at once on two cores: allow a cold start its time.
    report = machine.run(
        "/usr/bin/kiki",
        "status",
        "--json",
        "--timeout",
        "60",
        *SYSTEM_SERVICES,
        check=False,
        timeout=120,
    )
    journal = machine.journal("kiki-*", lines=80)
    assert report.stdout.startswith("{"), report.stderr + journal
    results = json.loads(report.stdout)
    for name in SYSTEM_SERVICES:
        journal = machine.journal(f"kiki-{name}*", lines=30)
        assert results[name]["ok"], (name, results[name], journal)
        assert results[name]["info"]["status"] == "ready"
        unit = f"kiki-{name}.service"
        assert machine.systemctl("is-active", unit) == "active"
        # Type=notify: active means READY=1 arrived; the pid answering is the unit's main pid.
        assert int(machine.prop(unit, "MainPID")) == results[name]["info"]["pid"]
        # Each took its listening socket from systemd rather than binding one itself.
        assert "(activated)" in machine.prop(unit, "StatusText"), machine.prop(unit, "StatusText")


def test_relay_listens_in_the_container_while_the_host_holds_its_port(machine: Machine) -> None:
    # Something listens on the host's 127.0.0.1:8765 (this module's fixture, or ./dev up) ...
    with socket.create_connection(("127.0.0.1", RELAY_PORT), timeout=10):
        pass
    # ... and the container's relay socket is bound to its own 127.0.0.1:8765 all the same.
    assert machine.systemctl("is-active", "kiki-sync-relay.socket") == "active"
    listens = machine.prop("kiki-sync-relay.socket", "Listen")
    assert listens == f"127.0.0.1:{RELAY_PORT} (Stream)", listens
    report = machine.run("/usr/bin/kiki", "status", "--json", "sync-relay", timeout=120)
    relay = json.loads(report.stdout)["sync-relay"]
    assert relay["ok"], relay
    assert relay["info"]["pid"] == int(machine.prop("kiki-sync-relay.service", "MainPID"))


def test_relay_admin_socket_and_state_directory(machine: Machine) -> None:
    """ProtectSystem=strict leaves the relay nothing to bind in /run/kiki: systemd holds its
    admin socket (root only); its documents and key live in its StateDirectory= itself."""
    journal = machine.journal("kiki-sync-relay*")
    active = machine.systemctl("is-active", "kiki-sync-relay-admin.socket", check=False)
    assert active == "active", journal
    sock = "/run/kiki/sync-relay-admin.sock"
    assert machine.run("stat", "-c", "%a %U %F", sock).stdout.split() == ["600", "root", "socket"]
    shared = machine.run(
        "/usr/bin/kiki", "session", "share", "kitchen", "--role", "observer", "--json", check=False
    )
    journal = machine.journal("kiki-sync-relay*")
    assert shared.returncode == 0, shared.stderr + journal
    assert json.loads(shared.stdout)["url"].startswith(f"ws://127.0.0.1:{RELAY_PORT}/session/")
    assert "(activated)" in machine.prop("kiki-sync-relay.service", "StatusText")
    state = "/var/lib/kiki/sync-relay"
    machine.run("test", "-f", f"{state}/sync-signing-key.pem")
    machine.run("test", "-f", f"{state}/sessions.sqlite3")
    assert machine.run("test", "-e", f"{state}/sync-relay", check=False).returncode != 0


def _systemd_version(machine: Machine) -> int:
    return int(machine.systemctl("--version").split()[1])


def _info(machine: Machine, name: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    report = machine.run("/usr/bin/kiki", "status", "--json", name, env=env, timeout=120)
    answer: dict[str, Any] = json.loads(report.stdout)[name]
    assert answer["ok"], answer
    info: dict[str, Any] = answer["info"]
    return info


def _reload(
    machine: Machine, name: str, systemctl: tuple[str, ...], env: dict[str, str] | None = None
) -> None:
    """``systemctl reload`` completes, and the same process serves on, ready, one reload on."""
    unit = f"kiki-{name}.service"

    def show(prop: str) -> str:
        return machine.run(*systemctl, "show", "-p", prop, "--value", unit, env=env).stdout.strip()

    # notify-reload where systemd has it; on an older one install.sh made the unit Type=notify
    # with an ExecReload= that sends the same SIGHUP.
    if _systemd_version(machine) >= 253:
        assert show("Type") == "notify-reload"
    else:
        assert show("Type") == "notify"
        assert "/bin/kill -HUP $MAINPID" in show("ExecReload")
    before = _info(machine, name, env)
    reloads: int = before["counters"].get("reloads", 0)
    machine.run(*systemctl, "reload", unit, env=env, timeout=60)

    def reloaded() -> bool:
        count: int = _info(machine, name, env)["counters"].get("reloads", 0)
        return count == reloads + 1

    machine.wait_for(f"{name} to count the reload", reloaded)
    after = _info(machine, name, env)
    assert after["pid"] == before["pid"] == int(show("MainPID"))
    assert after["status"] == "ready"
    assert "reload failed" not in after["statusText"], after["statusText"]
    assert machine.run(*systemctl, "is-active", unit, env=env).stdout.strip() == "active"


@pytest.mark.parametrize("name", SYSTEM_SERVICES)
def test_reload_keeps_the_service_up_and_ready(machine: Machine, name: str) -> None:
    _reload(machine, name, ("systemctl",))


def test_stop_is_clean(machine: Machine) -> None:
    machine.run("/usr/bin/kiki", "status", "a11y-server", check=False)
    unit = "kiki-a11y-server.service"
    machine.wait_for(
        "a11y-server active", lambda: machine.systemctl("is-active", unit, check=False) == "active"
    )
    machine.systemctl("stop", unit)
    assert machine.prop(unit, "Result") == "success"
    assert machine.prop(unit, "ExecMainStatus") == "0"
    # The socket stays, so the next connection brings the service back.
    assert machine.systemctl("is-active", "kiki-a11y-server.socket") == "active"
    assert machine.run("/usr/bin/kiki", "status", "a11y-server", check=False).returncode == 0


def test_a_killed_service_is_restarted(machine: Machine) -> None:
    unit = "kiki-tool-broker.service"
    machine.run("/usr/bin/kiki", "status", "tool-broker", check=False)
    machine.wait_for(
        "tool-broker active", lambda: machine.systemctl("is-active", unit, check=False) == "active"
    )
    before = int(machine.prop(unit, "MainPID"))
    restarts = int(machine.prop(unit, "NRestarts"))
    machine.systemctl("kill", "--signal=KILL", unit)

    def back() -> bool:
        pid = int(machine.prop(unit, "MainPID") or 0)
        return (
            machine.systemctl("is-active", unit, check=False) == "active"
            and pid not in (0, before)
            and int(machine.prop(unit, "NRestarts")) > restarts
        )

    machine.wait_for("tool-broker restarted", back)
    assert machine.run("/usr/bin/kiki", "status", "tool-broker", check=False).returncode == 0


def test_dbus_gateway_as_a_user_unit(machine: Machine) -> None:
    machine.systemctl("start", "user@0.service")
    env = USER_ENV
    machine.run("systemctl", "--user", "start", "kiki-dbus-gateway.service", env=env)
    assert (
        machine.run(
            "systemctl", "--user", "is-active", "kiki-dbus-gateway.service", env=env
        ).stdout.strip()
        == "active"
    )
    reply = machine.run(
        "busctl",
        "--user",
        "call",
        GATEWAY_BUS_NAME,
        GATEWAY_OBJECT_PATH,
        SERVICE_INTERFACE,
        "GetInfo",
        env=env,
    ).stdout
    assert '"name" s "dbus-gateway"' in reply
    status = machine.run("/usr/bin/kiki", "status", "--json", "dbus-gateway", env=env)
    assert json.loads(status.stdout)["dbus-gateway"]["ok"] is True
    _reload(machine, "dbus-gateway", ("systemctl", "--user"), env)


def test_security_exposure_within_budget() -> None:
    units = [
        *sorted((REPO / "units").glob("*.service")),
        *sorted((REPO / "units" / "user").glob("*.service")),
    ]
    scores = {}
    for unit in units:
        out = subprocess.run(
            ["systemd-analyze", "security", "--offline=true", str(unit)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
        assert match, out
        scores[unit.name] = float(match.group(1))
    build = REPO / "build"
    build.mkdir(exist_ok=True)
    (build / "security.json").write_text(json.dumps(scores, indent=2) + "\n")
    print("systemd-analyze security --offline=true:", json.dumps(scores))
    for name, limit in THRESHOLDS.items():
        assert scores[name] <= limit, f"{name}: exposure {scores[name]} > {limit}"


# A reader as strict as a unit can be while still sharing the host's /dev/shm: a dynamic user
# in group kiki, no network, nothing writable, no capabilities.
READER_PROPERTIES = (
    "DynamicUser=yes",
    "SupplementaryGroups=kiki",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "PrivateNetwork=yes",
    "RestrictAddressFamilies=AF_UNIX",
    "NoNewPrivileges=yes",
    "CapabilityBoundingSet=",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectControlGroups=yes",
    "RestrictNamespaces=yes",
    "LockPersonality=yes",
    "MemoryDenyWriteExecute=yes",
    "SystemCallFilter=@system-service",
    "SystemCallArchitectures=native",
    "Environment=KIKI_RUNTIME_DIR=/run/kiki",
    "Environment=PYTHONDONTWRITEBYTECODE=1",
    # No HOME: a dynamic user of this container has none (no nss-systemd in its /etc), and
    # `kiki` must not need one.
)

RING_WRITE_PROBE = """
import os
try:
    os.open("/dev/shm/kiki-sensors.imu0", os.O_RDWR)
    print("writable")
except PermissionError:
    print("read-only")
"""


def _in_reader_unit(machine: Machine, name: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    props = [arg for p in READER_PROPERTIES for arg in ("-p", p)]
    return machine.run(
        "systemd-run", "--wait", "--pipe", "--quiet", f"--unit={name}", *props, *cmd, timeout=120
    )


def _watch_imu(machine: Machine, unit: str, count: int, *options: str) -> list[dict[str, Any]]:
    """``kiki sensors watch imu0 --json`` in a hardened reader unit: its samples."""
    out = _in_reader_unit(
        machine,
        unit,
        "/usr/bin/kiki",
        "sensors",
        "watch",
        "imu0",
        *options,
        "--json",
        "--count",
        str(count),
    ).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_a_reader_in_another_hardened_unit_reads_the_rings(machine: Machine) -> None:
    status = machine.run("/usr/bin/kiki", "status", "sensor-publisher", check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    unit = "kiki-sensor-publisher.service"
    assert machine.systemctl("is-active", unit) == "active"
    rings = machine.run("stat", "-c", "%n %a %U %G", "/dev/shm/kiki-sensors.imu0").stdout.split()
    assert rings[1:] == ["640", "kiki-sensors", "kiki"]

    samples = _watch_imu(machine, "kiki-sensor-reader", 200)
    assert len(samples) == 200
    first = samples[0]["index"]
    assert [s["index"] for s in samples] == list(range(first, first + 200))
    assert all(9.7 < s["values"]["az"] < 9.9 for s in samples)
    assert [s["timestampNs"] for s in samples] == sorted(s["timestampNs"] for s in samples)
    # Subscribed through the notify socket, from the reader unit: the publisher counted it
    # (the reader has gone, its subscription stays counted; `stats` itself subscribes to
    # nothing).
    stats = json.loads(machine.run("/usr/bin/kiki", "sensors", "stats", "--json").stdout)
    assert stats["sensors"]["imu0"]["subscriptions"] >= 1
    assert stats["sensors"]["imu0"]["written"] >= first + 200
    assert stats["sensors"]["cpu"]["written"] > 0

    # The same unit's hardening lets a reader sleep on the ring's futex (a read-only mapping
    # of its header; futex(2) is in @system-service).
    indices = [s["index"] for s in _watch_imu(machine, "kiki-sensor-futex-reader", 200, "--futex")]
    assert indices == list(range(indices[0], indices[0] + 200))

    probe = _in_reader_unit(
        machine, "kiki-sensor-probe", "/usr/lib/kiki/venv/bin/python", "-c", RING_WRITE_PROBE
    )
    assert probe.stdout.strip() == "read-only"

    # A publisher restart while a reader unit is reading: the reader notices the new ring (a
    # new generation), maps it and goes on; its samples start again from the new ring's first.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        reading = pool.submit(_watch_imu, machine, "kiki-sensor-reader2", 3000)

        def reader_subscribed() -> bool:
            stats = json.loads(machine.run("/usr/bin/kiki", "sensors", "stats", "--json").stdout)
            return any("imu0" in s["sensors"] for s in stats["subscribers"])

        machine.wait_for("the reader unit subscribed", reader_subscribed)
        machine.systemctl("restart", unit)
        indices = [s["index"] for s in reading.result(timeout=120)]
    assert len(indices) == 3000
    restarts = [i for i in range(1, len(indices)) if indices[i] <= indices[i - 1]]
    assert len(restarts) == 1, "the reader should have followed exactly one new ring"
    before, after = indices[: restarts[0]], indices[restarts[0] :]
    assert before == list(range(before[0], before[0] + len(before)))
    assert after == list(range(after[0], after[0] + len(after)))


# A remote controller, run in the container (the relay listens on its loopback): joins the
# session, waits until the device link has written the tools it may call with the broker live,
# then asks the device to call TOOL. Prints the state it saw and the call's outcome as JSON.
REMOTE_CONTROLLER = """
import asyncio, json, sys
from libkiki.errors import KikiError
from libkiki.session import SessionClient

URL, TOOL, LIVE = sys.argv[1], sys.argv[2], sys.argv[3].split(",")

async def main():
    async with SessionClient(URL, connect_timeout=60) as s:
        try:
            async with asyncio.timeout(90):
                while True:
                    state = s.state()
                    stale = state.get("stale") or []
                    if TOOL in (state.get("tools") or []) and not set(LIVE) & set(stale):
                        break
                    await asyncio.sleep(0.1)
        except TimeoutError:
            sys.exit(f"the link never wrote {TOOL} into tools with {LIVE} live: {state}")
        try:
            result = {"ok": await s.call(TOOL, {}, timeout=60)}
        except KikiError as exc:
            result = {"error": type(exc).__name__, "message": str(exc)}
    print(json.dumps({**{k: state.get(k) for k in ("tools", "stale", "screen", "sensors")},
                      "result": result}))

asyncio.run(main())
"""
# What the link mirrors with no app, player or notification daemon on the device: the tools,
# the (empty) screen from the a11y-server and the sensor publisher's samples, each through the
# broker from a provider the relay's unit brought up.
LIVE_KEYS = ("tools", "screen", "sensors")
APPEND = "import sys; open(sys.argv[1], 'a').write(sys.argv[2])"
LINKED_SESSION = "device"  # image/etc/kiki/sync-relay.toml
REMOTE_SUBJECT = "did:plc:kikitest"
REMOTE_TOOL = "dev.kiki.service.getInfo"  # the broker's own: nothing else need be running


def _remote_call(machine: Machine) -> dict[str, Any]:
    shared = machine.run(
        "/usr/bin/kiki",
        "session",
        "share",
        LINKED_SESSION,
        "--role",
        "controller",
        "--sub",
        REMOTE_SUBJECT,
        "--json",
    )
    url = json.loads(shared.stdout)["url"]
    ran = machine.run(
        "/usr/lib/kiki/venv/bin/python",
        "-c",
        REMOTE_CONTROLLER,
        url,
        REMOTE_TOOL,
        ",".join(LIVE_KEYS),
        check=False,
        timeout=180,
    )
    journal = machine.journal("kiki-sync-relay*", "kiki-tool-broker*")
    assert ran.returncode == 0, ran.stdout + ran.stderr + journal
    answer: dict[str, Any] = json.loads(ran.stdout)
    return answer


def test_device_link_under_the_units(machine: Machine) -> None:
    """The image's defaults link the session "device": the relay (a dynamic user with private
    users, in group kiki) reaches the broker's socket and is its trusted delegate
    app:kiki-sync-relay. A remote controller sees the tools with the broker live; its intent is
    refused under the shipped policy (remote people get nothing by default) and carried out
    once the operator allows that person the tool."""
    relay_toml = machine.run("cat", "/etc/kiki/sync-relay.toml").stdout
    assert f'link_sessions = ["{LINKED_SESSION}"]' in relay_toml
    policy = "/etc/kiki/tool-policy.toml"
    assert machine.prop("kiki-sync-relay.service", "SupplementaryGroups") == "kiki"
    assert machine.prop("kiki-sync-relay.service", "PrivateUsers") == "yes"

    denied = _remote_call(machine)
    print("the device link's state, seen by a controller:", json.dumps(denied))
    # Live (the script waited for it): the link reached the broker, and through it the
    # providers the relay's unit started.
    assert REMOTE_TOOL in denied["tools"]
    assert not set(LIVE_KEYS) & set(denied["stale"] or []), denied
    assert {"dev.kiki.sensor.read", "dev.kiki.a11y.snapshot"} <= set(denied["tools"]), denied
    assert denied["screen"] == {"apps": []}, denied
    assert denied["sensors"], denied
    assert all(reading["values"] for reading in denied["sensors"]), denied
    # Refused for the person by policy (no rule names a remote principal), asked by the relay
    # as the broker identified it; an untrusted delegate would be refused as such instead.
    refusal = denied["result"]
    assert refusal["error"] == "PermissionDenied", denied
    assert f"remote:{REMOTE_SUBJECT}" in refusal["message"], denied
    assert "app=kiki-sync-relay" in refusal["message"], denied
    assert "not a trusted delegate" not in refusal["message"], denied

    allow = f'\n[[allow]]\nprincipals = ["remote:{REMOTE_SUBJECT}"]\ntools = ["{REMOTE_TOOL}"]\n'
    machine.run("cp", "-p", policy, f"{policy}.shipped")
    machine.run("/usr/lib/kiki/venv/bin/python", "-c", APPEND, policy, allow)
    try:
        machine.systemctl("reload", "kiki-tool-broker.service")
        allowed = _remote_call(machine)
    finally:
        machine.run("mv", f"{policy}.shipped", policy)
        machine.systemctl("reload", "kiki-tool-broker.service")
    assert "ok" in allowed["result"], allowed
    info = allowed["result"]["ok"]
    assert info["name"] == "tool-broker"
    assert info["pid"] == int(machine.prop("kiki-tool-broker.service", "MainPID"))


def _bytes(size: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)


def test_memory_limits_hold_and_the_working_sets_fit_them(machine: Machine) -> None:
    """Each unit's MemoryHigh=/MemoryMax= as its file says; what each service holds now (after
    the tests above loaded it) is recorded in build/memory.json and is under its MemoryHigh."""
    units: dict[str, tuple[str, ...]] = {
        f"kiki-{name}.service": ("systemctl",) for name in SYSTEM_SERVICES
    }
    units["kiki-dbus-gateway.service"] = ("systemctl", "--user")
    measured = {}
    for unit, systemctl in units.items():
        path = REPO / "units" / ("user" if "--user" in systemctl else "") / unit
        settings = dict(
            line.split("=", 1)
            for line in path.read_text().splitlines()
            if line.startswith(("MemoryHigh=", "MemoryMax="))
        )
        env = USER_ENV if "--user" in systemctl else None
        for key in ("MemoryHigh", "MemoryMax"):
            shown = machine.run(*systemctl, "show", "-p", key, "--value", unit, env=env)
            assert int(shown.stdout) == _bytes(settings[key]), (unit, key, shown.stdout)
        pid = int(machine.run(*systemctl, "show", "-p", "MainPID", "--value", unit, env=env).stdout)
        assert pid, f"{unit} is not running"
        status = machine.run("cat", f"/proc/{pid}/status").stdout
        rss = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) << 10  # type: ignore[union-attr]
        peak = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) << 10  # type: ignore[union-attr]
        current = machine.run(*systemctl, "show", "-p", "MemoryCurrent", "--value", unit, env=env)
        measured[unit] = {
            "rss": rss,
            "rss_peak": peak,
            # Not every cgroup setup accounts memory for the container's units ([not set]).
            "memory_current": int(current.stdout) if current.stdout.strip().isdigit() else None,
            "memory_high": _bytes(settings["MemoryHigh"]),
        }
        assert peak < _bytes(settings["MemoryHigh"]), (unit, measured[unit])
    build = REPO / "build"
    build.mkdir(exist_ok=True)
    (build / "memory.json").write_text(json.dumps(measured, indent=2) + "\n")
    print("memory under the units:", json.dumps(measured))
