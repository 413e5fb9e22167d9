"""The updater's health command in a transient unit of its own, under a real systemd (the
session's container, ``kikitest.systemd_fixtures``, Kiki installed by ``image/install.sh``): the
updater (``kiki-updater.service``, root, sandboxed) starts ``kiki-health-*.service`` through the
system manager; the check runs there as the app's own uid, in that unit's cgroup; a failing
check rolls the app back; a hanging one is stopped at its deadline and its unit is gone.
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
# Writes what the check saw into the app's data/: its uid, gid and cgroup.
SEEN = (
    'id -u > "$KIKI_APP_DATA/uid"; id -g > "$KIKI_APP_DATA/gid"; '
    'cat /proc/self/cgroup > "$KIKI_APP_DATA/cgroup"'
)
WRITE_APP = """
import json, os, sys
tree, app, version, check, deadline = sys.argv[1:6]
os.makedirs(tree, exist_ok=True)
health = {"command": ["/bin/sh", "-c", check], "deadlineSeconds": float(deadline)}
with open(os.path.join(tree, "kiki-app.json"), "w") as f:
    json.dump({"id": app, "version": version, "health": health}, f)
"""


def _install(machine: Machine, version: str, check: str, deadline: float = 30) -> Any:
    machine.run(
        "/usr/lib/kiki/venv/bin/python", "-c", WRITE_APP, TREE, APP, version, check, str(deadline)
    )
    ran = machine.run("/usr/bin/kiki", "app", "install", TREE, "--json", check=False, timeout=180)
    journal = machine.run(
        "journalctl",
        "--no-pager",
        "-n",
        "40",
        "-u",
        "kiki-updater*",
        "-u",
        "kiki-health-*",
        check=False,
    ).stdout
    assert ran.stdout.startswith("{"), ran.stdout + ran.stderr + journal
    return json.loads(ran.stdout), journal


def _versions(machine: Machine) -> list[str]:
    listed = json.loads(machine.run("/usr/bin/kiki", "app", "list", "--json").stdout)["apps"]
    return [a["version"] for a in listed if a["appId"] == APP]


def _health_units(machine: Machine) -> str:
    return machine.systemctl("list-units", "--all", "--no-legend", "kiki-health-*")


def test_a_health_check_runs_in_a_transient_unit_as_the_apps_uid(machine: Machine) -> None:
    answer, journal = _install(machine, "1.0", SEEN)
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
