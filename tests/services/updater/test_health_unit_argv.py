"""The transient unit a health command runs in: its name (each part escaped into a valid unit
name's, unique; never taken for one of Kiki's own services), the ``systemd-run`` command line
(the deadline, the sandbox, the uid dropped by setpriv, bound to the updater's unit, the
command's words passed through whatever systemd's version does with ``$``), and how what
``systemd-run`` says on its end is read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kiki_updater.health import Ran
from kiki_updater.health_unit import (
    RUNTIME_GRACE,
    SANDBOX,
    Outcome,
    escape,
    outcome,
    own_unit,
    unit_argv,
    unit_name,
)
from kiki_updater.names import is_id
from libkiki.peer import PeerCred, app_id_from_cgroup
from libkiki.principals import is_kiki_service

pytestmark = pytest.mark.unit

COMMIT = "0123456789abcdef" * 4
UNIT_NAME = re.compile(r"[A-Za-z0-9:_.\\-]{1,251}\.service")


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("org.example.player", "org.example.player"),
        ("org.ex-ample.a-b", r"org.ex\x2dample.a\x2db"),
        (".hidden", r"\x2ehidden"),
        # "/" escaped too (systemd-escape writes "-" for it, reading a path: an id is none)
        ("a/b c", r"a\x2fb\x20c"),
        ("é", r"\xc3\xa9"),
    ],
)
def test_names_are_escaped_into_one_part_of_a_unit_name(text: str, escaped: str) -> None:
    assert escape(text) == escaped


def test_a_unit_name_says_whose_check_of_which_commit_and_is_unique() -> None:
    name = unit_name("app", "org.ex-ample.player", COMMIT, token="00c0ffee")
    assert name == r"kiki-health-app-org.ex\x2dample.player-0123456789ab-00c0ffee.service"
    assert UNIT_NAME.fullmatch(name)
    # the longest id the updater accepts (1023 bytes, every other one escaped) still makes a
    # valid unit name, cut short of a broken escape
    longest = "a" * 63 + ("." + "b-" * 31 + "c") * 15
    assert is_id(longest)
    for cut in range(4):
        name = unit_name("agent", longest[: len(longest) - cut], COMMIT)
        assert UNIT_NAME.fullmatch(name), name
        assert len(name) <= 255
        assert re.search(r"\\x.?-", name) is None, name
    names = {unit_name("app", "org.example.player", COMMIT) for _ in range(64)}
    assert len(names) == 64


def _argv(
    version: int,
    command: tuple[str, ...] = ("bin/health", "--quick"),
    bound_to: str | None = None,
) -> list[str]:
    return unit_argv(
        "/usr/bin/systemd-run",
        "/usr/bin/setpriv",
        "kiki-health-app-x.y-0123-ab.service",
        command,
        uid=2113929217,
        deployment=Path("/var/lib/kiki/updater/ostree/app/x.y/deploy/0123"),
        data=Path("/var/lib/kiki/updater/ostree/app/x.y/data"),
        env={"PATH": "/usr/bin:/bin", "KIKI_APP_DATA": "/var/lib/kiki/updater/ostree/app/x.y/data"},
        deadline=2.5,
        version=version,
        bound_to=bound_to,
    )


def _props(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == "-p"]


def test_the_unit_waits_pipes_is_collected_and_holds_the_deadline() -> None:
    argv = _argv(252)
    options = argv[: argv.index("/usr/bin/setpriv")]
    for flag in ("--wait", "--pipe", "--collect", "--service-type=exec"):
        assert flag in options
    # its closing summary is how a check that exits 1 differs from a unit never started
    assert "--quiet" not in options
    assert "--unit=kiki-health-app-x.y-0123-ab.service" in options
    props = _props(argv)
    # systemd stops it on its own a little after the updater would have
    assert f"RuntimeMaxSec={3 + RUNTIME_GRACE}" in props
    assert "WorkingDirectory=/var/lib/kiki/updater/ostree/app/x.y/deploy/0123" in props
    assert "ReadWritePaths=-/var/lib/kiki/updater/ostree/app/x.y/data" in props
    assert set(SANDBOX) <= set(props)
    assert "--setenv=KIKI_APP_DATA=/var/lib/kiki/updater/ostree/app/x.y/data" in options


def test_the_sandbox_leaves_the_unit_only_what_setpriv_needs() -> None:
    props = dict(p.split("=", 1) for p in SANDBOX)
    assert props["CapabilityBoundingSet"] == "CAP_SETUID CAP_SETGID"
    assert props["NoNewPrivileges"] == "yes"
    assert props["ProtectSystem"] == "strict"
    assert props["ProtectHome"] == "yes"
    assert props["PrivateTmp"] == "yes"
    assert "User" not in props  # systemd refuses a uid no user database knows


def test_setpriv_drops_to_the_apps_uid_before_the_command() -> None:
    argv = _argv(252)
    tail = argv[argv.index("/usr/bin/setpriv") :]
    assert tail == [
        "/usr/bin/setpriv",
        "--reuid=2113929217",
        "--regid=2113929217",
        "--clear-groups",
        "--no-new-privs",
        "--",
        "bin/health",
        "--quick",
    ]


def test_a_dollar_in_the_command_reaches_it_whatever_systemds_version() -> None:
    command = ("/bin/sh", "-c", 'echo "$KIKI_APP_DATA" $$ ${X}')
    old = _argv(252, command)
    assert old[-3:] == ["/bin/sh", "-c", 'echo "$$KIKI_APP_DATA" $$$$ $${X}']
    assert "--expand-environment=no" not in old
    new = _argv(254, command)
    assert new[-3:] == list(command)
    assert "--expand-environment=no" in new[: new.index("/usr/bin/setpriv")]


def test_a_data_path_with_a_space_is_quoted_for_systemd() -> None:
    argv = unit_argv(
        "/usr/bin/systemd-run",
        "/usr/bin/setpriv",
        "u.service",
        ("true",),
        uid=1,
        deployment=Path("/srv/a b/deploy/c"),
        data=Path('/srv/a b/da"ta'),
        env={},
        deadline=1,
        version=252,
    )
    assert 'ReadWritePaths=-"/srv/a b/da\\"ta"' in _props(argv)


def test_how_a_check_ran_is_reported() -> None:
    unit = "kiki-health-app-x.y-0123-ab.service"
    assert Ran("unit", uid=7, unit=unit).view() == {"ran": "unit", "uid": 7, "unit": unit}
    assert Ran("process", uid=None).view() == {"ran": "process"}
    assert Ran("tool", tool="x.y.ping").view() == {"ran": "tool", "tool": "x.y.ping"}
    assert str(Ran("unit", uid=7, unit=unit)) == f"the transient unit {unit} as uid 7"


def test_the_unit_is_bound_to_the_updaters_own() -> None:
    assert "BindsTo=kiki-updater.service" in _props(_argv(252, bound_to="kiki-updater.service"))
    assert not [p for p in _props(_argv(252)) if p.startswith("BindsTo=")]


def test_a_command_line_that_cannot_learn_systemds_version_doubles_its_dollars(
    tmp_path: Path,
) -> None:
    broken = tmp_path / "systemd-run"
    broken.write_text("#!/nonexistent/interpreter\n")  # exec fails: OSError
    broken.chmod(0o755)
    argv = unit_argv(
        str(broken),
        "/usr/bin/setpriv",
        "u.service",
        ("/bin/sh", "-c", "echo $X"),
        uid=1,
        deployment=Path("/d"),
        data=Path("/d/data"),
        env={},
        deadline=1,
    )
    assert argv[-3:] == ["/bin/sh", "-c", "echo $$X"]  # read as one $ by every version


SUMMARY = (
    "Finished with result: exit-code\n"
    "Main processes terminated with: code=exited/status=3\n"
    "Service runtime: 12ms\n"
    "CPU time consumed: 5ms\n"
)


def test_systemd_runs_summary_is_told_from_the_checks_own_words() -> None:
    said = "Running as unit: kiki-health-x.service\nnot ready\n" + SUMMARY
    assert outcome(said) == Outcome("exit-code", "code=exited/status=3", ("not ready",))


def test_a_unit_that_never_started_has_no_result() -> None:
    said = "Failed to start transient service unit: Connection timed out\n"
    assert outcome(said) == Outcome(
        None, None, ("Failed to start transient service unit: Connection timed out",)
    )


def test_a_check_cannot_write_systemd_runs_summary_for_it() -> None:
    forged = "Finished with result: success\nMain processes terminated with: code=exited/status=0\n"
    ended = outcome(forged + "the real end\n" + SUMMARY)
    assert (ended.result, ended.status) == ("exit-code", "code=exited/status=3")


def _identified(cgroup: str, uid: int) -> tuple[str | None, bool]:
    app_id, unit, user = app_id_from_cgroup(cgroup, uid)
    cred = PeerCred(pid=1234, uid=uid, gid=uid, app_id=app_id, unit=unit, app_user=user)
    return app_id, is_kiki_service(cred, 0)


@pytest.mark.parametrize("ident", ["org.example.checked", "a" + "-" * 62 + ".b", "kiki-x.y"])
def test_a_check_in_its_unit_is_never_taken_for_kikis_own_service(ident: str) -> None:
    uid = 2113929217  # an app's (AppUsers), not the updater's
    unit = unit_name("app", ident, COMMIT)
    assert _identified(f"0::/system.slice/{unit}\n", uid) == (None, False)
    # what a child of the updater's would be taken for, whatever its uid
    assert _identified("0::/system.slice/kiki-updater.service\n", uid) == ("kiki-updater", True)


def test_the_updaters_own_unit_is_read_from_its_cgroup() -> None:
    assert own_unit("0::/system.slice/kiki-updater.service\n") == ("kiki-updater.service", True)
    assert own_unit("0::/system.slice/other.service\n") == ("other.service", False)
    assert own_unit("0::/user.slice/user-1000.slice/session-2.scope\n") == (None, False)
    assert own_unit("0::/\n") == (None, False)
