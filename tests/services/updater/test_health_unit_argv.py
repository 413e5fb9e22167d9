"""The transient unit a health command runs in: its name (escaped as systemd-escape does,
unique) and the ``systemd-run`` command line (the deadline, the sandbox, the uid dropped by
setpriv, the command's words passed through whatever systemd's version does with ``$``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kiki_updater.health import Ran
from kiki_updater.health_unit import RUNTIME_GRACE, SANDBOX, escape, unit_argv, unit_name
from kiki_updater.names import is_id

pytestmark = pytest.mark.unit

COMMIT = "0123456789abcdef" * 4
UNIT_NAME = re.compile(r"[A-Za-z0-9:_.\\-]{1,251}\.service")


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("org.example.player", "org.example.player"),
        ("org.ex-ample.a-b", r"org.ex\x2dample.a\x2db"),
        (".hidden", r"\x2ehidden"),
        ("a/b c", r"a\x2fb\x20c"),
        ("é", r"\xc3\xa9"),
    ],
)
def test_names_are_escaped_as_systemd_escape_does(text: str, escaped: str) -> None:
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


def _argv(version: int, command: tuple[str, ...] = ("bin/health", "--quick")) -> list[str]:
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
    )


def _props(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == "-p"]


def test_the_unit_waits_pipes_is_collected_and_holds_the_deadline() -> None:
    argv = _argv(252)
    options = argv[: argv.index("/usr/bin/setpriv")]
    for flag in ("--wait", "--pipe", "--collect", "--quiet", "--service-type=exec"):
        assert flag in options
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
