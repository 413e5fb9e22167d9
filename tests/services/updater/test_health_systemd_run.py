"""How the updater reads ``systemd-run`` and ``systemctl``, with stand-ins on ``PATH`` (the real
ones under a real systemd: tests/units/test_updater_health_unit.py): a unit systemd could not
start is no verdict on the app (``Unavailable``), a check's own failure is (``Unhealthy``), and
a ``systemctl stop`` that fails or overruns never hides the check's failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kiki_updater.health import PATH, HealthSpec, Unhealthy, run_in_unit
from kiki_updater.health_unit import stop_leftovers, stop_unit
from libkiki.errors import Unavailable

pytestmark = pytest.mark.integration

UNIT = "kiki-health-app-x.y-0123-ab.service"
VERSION = '[ "$1" = --version ] && { echo "systemd 252 (252.39-1~deb12u2)"; exit 0; }\n'


def _stand_in(bin_dir: Path, name: str, script: str) -> Path:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return path


def _run(tmp_path: Path, systemd_run: str, deadline: float = 10.0) -> None:
    deployment = tmp_path / "deploy"
    deployment.mkdir(exist_ok=True)
    run_in_unit(
        HealthSpec(deadline, command=("bin/health",)),
        deployment,
        tmp_path / "no-data",  # nothing to hand over to the uid
        uid=2113929217,
        unit=UNIT,
        systemd_run=systemd_run,
        path=f"{tmp_path / 'bin'}:{PATH}",
    )


def test_a_unit_systemd_could_not_start_is_no_failed_check(tmp_path: Path) -> None:
    # systemd-run exits 1, as a check exiting 1 would: only its silence on the unit's end
    # tells them apart
    systemd_run = _stand_in(
        tmp_path / "bin",
        "systemd-run",
        VERSION + 'echo "Failed to start transient service unit: Connection timed out" >&2\n'
        "exit 1\n",
    )
    with pytest.raises(Unavailable, match="could not start the check's unit") as raised:
        _run(tmp_path, str(systemd_run))
    assert not isinstance(raised.value, Unhealthy)
    assert "Connection timed out" in str(raised.value)


@pytest.mark.parametrize(
    ("ending", "said"),
    [
        (
            "Finished with result: exit-code\n"
            "Main processes terminated with: code=exited/status=1\n",
            "bin/health exited 1: not ready",
        ),
        (
            "Finished with result: signal\n"
            "Main processes terminated with: code=killed/status=SEGV\n",
            "bin/health was killed (SEGV; signal): not ready",
        ),
        ("Finished with result: timeout\n", "bin/health ended: timeout: not ready"),
    ],
)
def test_a_check_that_ran_and_failed_is_a_failed_check(
    tmp_path: Path, ending: str, said: str
) -> None:
    systemd_run = _stand_in(
        tmp_path / "bin",
        "systemd-run",
        VERSION
        + "echo 'Running as unit: "
        + UNIT
        + "' >&2\n"
        + "echo 'Finished with result: success' >&2\n"  # the check's own words, not systemd's
        + "echo 'not ready' >&2\n"
        + f"printf '{ending}Service runtime: 3ms\\n' >&2\nexit 1\n",
    )
    with pytest.raises(Unhealthy) as raised:
        _run(tmp_path, str(systemd_run))
    assert str(raised.value) == said


def test_a_check_that_passed_in_its_unit_passes(tmp_path: Path) -> None:
    systemd_run = _stand_in(
        tmp_path / "bin",
        "systemd-run",
        VERSION + "printf 'Finished with result: success\\n' >&2\nexit 0\n",
    )
    _run(tmp_path, str(systemd_run))


def test_a_stop_that_cannot_run_still_ends_in_the_checks_failure(tmp_path: Path) -> None:
    systemd_run = _stand_in(tmp_path / "bin", "systemd-run", VERSION + "exec sleep 30\n")
    # a systemctl that cannot be executed (OSError) when the deadline stops the unit
    (tmp_path / "bin" / "systemctl").write_text("#!/nonexistent/interpreter\n")
    (tmp_path / "bin" / "systemctl").chmod(0o755)
    with pytest.raises(Unhealthy, match=r"did not end within 0\.3 s"):
        _run(tmp_path, str(systemd_run), deadline=0.3)


def test_a_stop_past_its_timeout_is_given_up_not_raised(tmp_path: Path) -> None:
    record = tmp_path / "asked"
    _stand_in(tmp_path / "bin", "systemctl", f'echo "$@" > {record}\nexec sleep 30\n')
    stop_unit(UNIT, str(tmp_path / "bin"), timeout=0.2)
    assert record.read_text().split() == ["stop", "--", UNIT]


@pytest.mark.skipif(
    os.geteuid() == 0 and os.path.isdir("/run/systemd/system"), reason="a system manager is here"
)
def test_no_leftover_is_looked_for_where_no_unit_is_started(tmp_path: Path) -> None:
    record = tmp_path / "asked"
    _stand_in(tmp_path / "bin", "systemctl", f"echo called > {record}\n")
    _stand_in(tmp_path / "bin", "systemd-run", VERSION)
    assert stop_leftovers(str(tmp_path / "bin")) == []
    assert not record.exists()
