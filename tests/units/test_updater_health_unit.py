"""The updater's health command in a transient unit of its own, under a real systemd (the
session's container, ``kikitest.systemd_fixtures``, Kiki installed by ``image/install.sh``): the
updater (``kiki-updater.service``, root, sandboxed) starts ``kiki-health-*.service`` through the
system manager; the check runs there as the app's own uid, in that unit's cgroup; a failing
check rolls the app back; a hanging one is stopped at its deadline and its unit is gone; an
updater killed during a check leaves no check running beside the version put back.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from kikitest.systemd_fixtures import Machine

pytestmark = pytest.mark.system

APP = "org.example.checked"
STATE = "/var/lib/kiki/updater/ostree"
TREE = "/var/tmp/kiki-checked-app"
# Writes what the check saw into the app's data/: its uid, gid, cgroup, privileges and words.
SEEN = (
    'id -u > "$KIKI_APP_DATA/uid"; id -g > "$KIKI_APP_DATA/gid"; '
    'cat /proc/self/cgroup > "$KIKI_APP_DATA/cgroup"; '
    "grep -E '^(CapInh|CapPrm|CapEff|CapAmb|NoNewPrivs|Groups):' /proc/self/status "
    '> "$KIKI_APP_DATA/status"; '
    'printf "%s\\n" "$@" > "$KIKI_APP_DATA/words"'
)
# Words systemd would read as its own (variables, specifiers) unless passed through.
WORDS = ["$FOO", "$$", "${KIKI_APP_DATA}", "%n", "%%", "a b"]
WRITE_APP = """
import json, os, sys
tree, app, version, check, deadline = sys.argv[1:6]
os.makedirs(tree, exist_ok=True)
command = ["/bin/sh", "-c", check, "sh", *sys.argv[6:]]
health = {"command": command, "deadlineSeconds": float(deadline)}
with open(os.path.join(tree, "kiki-app.json"), "w") as f:
    json.dump({"id": app, "version": version, "health": health}, f)
"""


def _write(machine: Machine, version: str, check: str, deadline: float, *words: str) -> None:
    machine.run(
        "/usr/lib/kiki/venv/bin/python",
        "-c",
        WRITE_APP,
        TREE,
        APP,
        version,
        check,
        str(deadline),
        *words,
    )


def _install(machine: Machine, version: str, check: str, deadline: float = 30, *words: str) -> Any:
    _write(machine, version, check, deadline, *words)
    ran = machine.run("/usr/bin/kiki", "app", "install", TREE, "--json", check=False, timeout=180)
    journal = machine.journal("kiki-updater*", "kiki-health-*")
    assert ran.stdout.startswith("{"), ran.stdout + ran.stderr + journal
    return json.loads(ran.stdout), journal


def _versions(machine: Machine) -> list[str]:
    listed = json.loads(machine.run("/usr/bin/kiki", "app", "list", "--json").stdout)["apps"]
    return [a["version"] for a in listed if a["appId"] == APP]


def _health_units(machine: Machine) -> str:
    return machine.systemctl("list-units", "--all", "--no-legend", "kiki-health-*")


def test_a_health_check_runs_in_a_transient_unit_as_the_apps_uid(machine: Machine) -> None:
    answer, journal = _install(machine, "1.0", SEEN, 30, *WORDS)
    assert answer["ok"] is True, (answer, journal)
    health = answer["operation"]["health"]
    assert health["ran"] == "unit", health
    unit, uid = health["unit"], health["uid"]
    assert unit.startswith("kiki-health-app-org.example.checked-"), unit
    assert unit.endswith(".service"), unit
    data = f"{STATE}/app/{APP}/data"
    assert machine.run("cat", f"{data}/uid").stdout.split() == [str(uid)]
    assert machine.run("cat", f"{data}/gid").stdout.split() == [str(uid)]
    assert uid != 0
    # its own cgroup: the transient unit's, not the updater's
    cgroup = machine.run("cat", f"{data}/cgroup").stdout
    assert f"/system.slice/{unit}" in cgroup, cgroup
    assert "kiki-updater" not in cgroup, cgroup
    # no capability, no new privileges, no supplementary group: setpriv's drop held
    status = dict(
        line.split(":", 1) for line in machine.run("cat", f"{data}/status").stdout.splitlines()
    )
    assert {k: v.strip() for k, v in status.items()} == {
        "CapInh": "0" * 16,
        "CapPrm": "0" * 16,
        "CapEff": "0" * 16,
        "CapAmb": "0" * 16,
        "NoNewPrivs": "1",
        "Groups": "",
    }, status
    # the manifest's words reach it as written: neither $ nor % is systemd's
    assert machine.run("cat", f"{data}/words").stdout.split("\n")[:-1] == WORDS
    assert unit not in _health_units(machine)  # collected once done
    assert (
        f"ran in the transient unit {unit}"
        in machine.run("journalctl", "--no-pager", "-u", "kiki-updater.service").stdout
    )


def test_a_failing_check_in_its_unit_rolls_back(machine: Machine) -> None:
    before = _versions(machine)
    assert before, "the first test installs the app"
    answer, journal = _install(machine, "1.1", "echo 'not ready' >&2; exit 3")
    assert answer["ok"] is False, (answer, journal)
    (said,) = answer["problems"]
    assert "not ready" in said["message"], said
    assert "in unit kiki-health-app-" in said["message"], said
    assert said["error"] == "HealthFailed"
    assert said["health"]["ran"] == "unit", said
    assert _versions(machine) == before


def test_a_hanging_check_is_stopped_at_its_deadline_and_its_unit_is_gone(
    machine: Machine,
) -> None:
    before = _versions(machine)
    nap = "sleep 3141.5"  # a command line no other process in the container has
    answer, journal = _install(machine, "1.2", f"{nap} & {nap}", deadline=2)
    assert answer["ok"] is False, (answer, journal)
    (said,) = answer["problems"]
    assert "did not end within 2 s" in said["message"], said
    assert _versions(machine) == before
    assert _health_units(machine) == ""
    left = machine.run("pgrep", "-f", nap, check=False)
    assert left.returncode == 1, left.stdout


def _unit_names(machine: Machine) -> list[str]:
    listed = machine.systemctl("list-units", "--all", "--plain", "--no-legend", "kiki-health-*")
    return [line.split()[0] for line in listed.splitlines() if line.strip()]


def test_an_updater_killed_during_a_check_leaves_no_check_running(machine: Machine) -> None:
    before = _versions(machine)
    assert before, "the first test installs the app"
    nap = "sleep 3141.7"
    _write(machine, "1.3", f"{nap} & {nap}", 120)
    # the install from a unit of its own: its client goes when the updater does
    machine.run(
        "systemd-run",
        "--collect",
        "--unit=test-killed-install",
        "/usr/bin/kiki",
        "app",
        "install",
        TREE,
        "--json",
    )
    machine.wait_for("the check's unit", lambda: _unit_names(machine))
    (unit,) = _unit_names(machine)
    # stopped with the updater's unit, by systemd
    assert machine.prop(unit, "BindsTo") == "kiki-updater.service"
    killed = machine.prop("kiki-updater.service", "MainPID")
    machine.systemctl("kill", "--kill-who=main", "--signal=KILL", "kiki-updater.service")

    def back() -> bool:
        return machine.prop("kiki-updater.service", "ActiveState") == "active" and machine.prop(
            "kiki-updater.service", "MainPID"
        ) not in ("0", killed)

    machine.wait_for("the updater back", back)
    machine.wait_for("no check's unit", lambda: not _unit_names(machine), timeout=30)
    assert _versions(machine) == before  # the restart undid the swap
    left = machine.run("pgrep", "-f", nap, check=False)
    assert left.returncode == 1, left.stdout


def test_at_start_the_updater_stops_the_checks_left_running(machine: Machine) -> None:
    # what a killed updater's restart does before recovery (Updater._recover), where systemd
    # did not already stop them
    leftover = "kiki-health-app-org.example.left-0123456789ab-00000000.service"
    machine.run("systemd-run", f"--unit={leftover}", "--collect", "sleep", "3141.8")
    assert _unit_names(machine) == [leftover]
    stop = (
        "from kiki_updater.health import PATH\n"
        "from kiki_updater.health_unit import stop_leftovers\n"
        "print(' '.join(stop_leftovers(PATH)))\n"
    )
    said = machine.run("/usr/lib/kiki/venv/bin/python", "-c", stop).stdout.split()
    assert said == [leftover]
    assert _unit_names(machine) == []
