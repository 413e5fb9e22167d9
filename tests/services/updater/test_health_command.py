"""A health command: a minimal environment, stdout discarded, a bounded tail of stderr."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kiki_updater.health import HealthGate, HealthSpec, Unhealthy, run_command
from kikitest import REPO
from kikitest.ostree_fixtures import traversable_dir

pytestmark = pytest.mark.integration

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


def _check(tmp_path: Path, script: str) -> tuple[HealthSpec, Path]:
    deployment = tmp_path / "deploy"
    (deployment / "bin").mkdir(parents=True)
    health = deployment / "bin" / "health"
    health.write_text("#!/bin/sh\n" + script)
    health.chmod(0o755)
    return HealthSpec(10.0, command=("bin/health",)), deployment


def test_the_command_gets_a_minimal_environment_and_no_stdout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KIKI_UPDATER_SECRET_THING", "the updater's own")
    spec, deployment = _check(
        tmp_path,
        '[ -z "$KIKI_UPDATER_SECRET_THING" ] || { echo "saw the updater env" >&2; exit 1; }\n'
        '[ "$(readlink /proc/$$/fd/1)" = /dev/null ] || { echo "stdout kept" >&2; exit 1; }\n'
        '[ -n "$KIKI_APP_DATA" ] || exit 1\n',
    )
    run_command(spec, deployment, tmp_path / "data")


def test_only_a_bounded_tail_of_stderr_is_kept(tmp_path: Path) -> None:
    # 64 MB on each stream, then the line the failure reports; the check runs in a fresh
    # interpreter so that its peak memory is its own
    _, deployment = _check(
        tmp_path,
        "head -c 67108864 /dev/zero\nhead -c 67108864 /dev/zero >&2\n"
        "echo >&2\necho 'the last words' >&2\nexit 3\n",
    )
    program = textwrap.dedent(f"""
        import resource
        from pathlib import Path
        from kiki_updater.health import HealthSpec, Unhealthy, run_command
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            run_command(HealthSpec(60.0, command=("bin/health",)), Path({str(deployment)!r}),
                        Path("/nonexistent"))
        except Unhealthy as exc:
            print(exc)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """)
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, check=True, env=dict(os.environ)
    )
    said, grown_kib = done.stdout.decode().strip().splitlines()
    assert said == "bin/health exited 3: the last words"
    assert int(grown_kib) < 16 * 1024, f"grew {int(grown_kib) // 1024} MB for 64 MB of stderr"


def test_a_command_past_its_deadline_is_killed_with_its_children(tmp_path: Path) -> None:
    nap = f"{os.getpid() % 1000 + 3600}.5"  # a duration no other process here sleeps
    spec, deployment = _check(tmp_path, f"sleep {nap} &\nsleep 30\n")
    with pytest.raises(Unhealthy, match="did not end within"):
        run_command(HealthSpec(0.5, command=spec.command), deployment, tmp_path / "data")
    left = subprocess.run(["pgrep", "-x", "-f", f"sleep {nap}"], capture_output=True, check=False)
    for pid in left.stdout.split():
        os.kill(int(pid), 9)
    assert left.returncode == 1, "a child of the check outlived it"


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping root needs root")
def test_as_root_the_command_runs_as_the_uid_given_with_no_new_privileges(
    tmp_path: Path,
) -> None:
    # the deployment is under tmp_path, 0700 root: the uid reaches it only through the cwd
    # the child enters before giving up root
    assert tmp_path.parent.stat().st_mode & 0o077 == 0
    uid = 0x7E00FFFE
    spec, deployment = _check(
        tmp_path,
        "set -e\n"
        'echo "$(id -u) $(id -g) $(id -G)" > "$KIKI_APP_DATA/seen"\n'
        'grep "^NoNewPrivs:" /proc/self/status | tr -s "\\t " " " >> "$KIKI_APP_DATA/seen"\n'
        "cat /proc/self/status | grep -q '^CapEff:\\s*0*$' || exit 7\n",
    )
    with traversable_dir() as home:
        data = home / "data"
        data.mkdir(mode=0o700)
        run_command(spec, deployment, data, uid=uid)
        ids, privs = (data / "seen").read_text().splitlines()
        assert ids == f"{uid} {uid} {uid}"  # its own gid, no supplementary groups
        assert privs == "NoNewPrivs: 1"
        assert data.stat().st_uid == uid  # the app's data/ is the app's


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping root needs root")
def test_as_root_a_command_that_needs_root_fails(tmp_path: Path) -> None:
    spec, deployment = _check(tmp_path, "cat /etc/shadow > /dev/null\n")
    run_command(spec, deployment, tmp_path / "data")  # as the updater (root): it can
    with pytest.raises(Unhealthy, match="exited 1"):
        run_command(spec, deployment, tmp_path / "data", uid=0x7E00FFFD)


def _unit_bounding_set() -> list[str]:
    """The capabilities ``units/kiki-updater.service`` leaves the updater, as setpriv names them."""
    unit = (REPO / "units" / "kiki-updater.service").read_text()
    (line,) = [x for x in unit.splitlines() if x.startswith("CapabilityBoundingSet=")]
    return [cap.removeprefix("CAP_").lower() for cap in line.split("=", 1)[1].split()]


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping root needs root")
def test_a_command_drops_to_the_app_uid_under_the_units_bounding_set(tmp_path: Path) -> None:
    # The check runs in an interpreter whose bounding set is the unit's: what the updater has on
    # a device. Changing uid and gid needs CAP_SETUID and CAP_SETGID, which the unit must keep.
    spec, deployment = _check(tmp_path, 'test "$(id -u)" = 2113994750 || exit 9\n')
    caps = ",".join(["-all", *(f"+{cap}" for cap in _unit_bounding_set())])
    program = textwrap.dedent(f"""
        from pathlib import Path
        from kiki_updater.health import HealthSpec, Unhealthy, run_command
        try:
            run_command(HealthSpec(10.0, command={spec.command!r}), Path({str(deployment)!r}),
                        Path({str(tmp_path / "data")!r}), uid=0x7E00FFFE)
            print("ok")
        except Unhealthy as exc:
            print(exc)
    """)
    done = subprocess.run(
        ["setpriv", f"--bounding-set={caps}", "--", sys.executable, "-c", program],
        capture_output=True,
        check=True,
        env=dict(os.environ),
    )
    assert done.stdout.decode().strip() == "ok"


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_the_gate_reads_no_manifest_through_a_symlink_nor_from_a_fifo(
    tmp_path: Path, kind: str
) -> None:
    deployment = tmp_path / "deploy"
    deployment.mkdir()
    if kind == "fifo":
        os.mkfifo(deployment / "kiki-app.json")  # opening it to read would block for ever
    else:
        secret = tmp_path / "root-only.json"
        secret.write_text('{"health": {"command": ["/bin/true"]}}')
        (deployment / "kiki-app.json").symlink_to(secret)
    with pytest.raises(Unhealthy, match=r"no readable kiki-app\.json"):
        HealthGate()("app", "org.example.demo", deployment)


@pytest.mark.skipif(os.geteuid() != 0, reason="becomes another uid to be a non-root updater")
def test_a_non_root_updater_told_to_use_a_unit_says_it_is_not_root() -> None:
    # run as nobody: "not root" is why, whatever system manager there is
    with traversable_dir() as home:
        deployment = home / "deploy"
        deployment.mkdir(mode=0o755)
        (deployment / "kiki-app.json").write_text('{"health": {"command": ["/bin/true"]}}')
        (deployment / "kiki-app.json").chmod(0o644)
        program = textwrap.dedent(f"""
            from pathlib import Path
            from kiki_updater.health import HealthGate, Unhealthy
            try:
                HealthGate(runner="unit")("app", "org.example.demo", Path({str(deployment)!r}))
            except Unhealthy as exc:
                print(exc)
        """)
        done = subprocess.run(
            [*NOBODY, sys.executable, "-c", program],
            capture_output=True,
            check=False,
            env=dict(os.environ),
        )
    assert done.stdout.decode().strip() == (
        "the check cannot run in a unit of its own: the updater is not root"
    ), done.stderr.decode()
