"""``kiki app build``: an app directory checked, then published to an archive repository (the
updater's publishing code, run as its own process), signed when asked; ``kiki app
list|install|update|rollback|history|remove`` and ``kiki os`` through the real updater."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kikitest import kiki
from kikitest.ostree_fixtures import BOOTC_TESTDATA, bootc_stand_in, make_app_tree, serve_dir

pytestmark = pytest.mark.integration

APP = "org.example.player"


def test_build_publishes_releases_with_a_delta_and_signs_them(tmp_path: Path) -> None:
    from kiki_updater.gio import open_repo
    from kiki_updater.signing import generate_keypair, verify_commit

    secret, public = generate_keypair()
    (tmp_path / "key").write_text(secret)
    tree = make_app_tree(tmp_path / "app", APP, "1.0")
    repo = tmp_path / "published"
    first = kiki(
        "app", "build", str(tree), "--repo", str(repo), "--sign-key", str(tmp_path / "key")
    )
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"published {APP} 1.0 as ")
    assert "(first release)" in first.stdout
    (tree / "lib" / "m00" / "f00000.py").write_text("changed")
    second = kiki("app", "build", str(tree), "--repo", str(repo), "--json")
    release = json.loads(second.stdout)
    assert release["ok"] is True
    assert release["ref"].startswith(f"app/{APP}/")
    assert release["delta"] == f"{release['parent']}-{release['commit']}"
    assert verify_commit(open_repo(repo), release["parent"], (public,)) == public


def test_build_refuses_a_directory_that_does_not_check(tmp_path: Path) -> None:
    tree = make_app_tree(tmp_path / "app", APP, "1.0")
    (tree / "kiki-app.json").write_text('{"id": "org.example.player", "tools": ["x.y.nope"]}')
    run = kiki("app", "build", str(tree), "--repo", str(tmp_path / "published"), "--json")
    assert run.returncode == 1
    assert json.loads(run.stdout)["ok"] is False
    assert not (tmp_path / "published").exists()


@pytest.fixture
def updater_sock(tmp_path: Path, sockdir: Path, spawn_service: Any) -> Iterator[Path]:
    """The updater with a remote (signed releases on a static HTTP server) and a stand-in
    bootc over one of bootc's real status documents."""
    from kiki_updater.signing import generate_keypair

    secret, public = generate_keypair()
    (tmp_path / "key").write_text(secret)
    tree = make_app_tree(tmp_path / "app", APP, "1.0")
    repo = tmp_path / "published"
    assert (
        kiki(
            "app", "build", str(tree), "--repo", str(repo), "--sign-key", str(tmp_path / "key")
        ).returncode
        == 0
    )
    bootc, _ = bootc_stand_in(tmp_path / "bootc", "spec-staged-booted.yaml")
    with serve_dir(repo) as (url, _):
        (sockdir / "etc").mkdir()
        (sockdir / "etc" / "updater.toml").write_text(
            f'broker_tools = false\nbootc = "{bootc}"\n[remotes.origin]\nurl = "{url}"\n'
            f'ed25519_keys = ["{public}"]\n'
        )
        _, notes = spawn_service("updater")
        notes.wait_for("READY")
        yield sockdir / "updater.sock"


def test_app_commands_through_the_updater(updater_sock: Path, tmp_path: Path) -> None:
    sock = ["--socket", str(updater_sock)]
    run = kiki("app", *sock, "install", APP, "--remote", "origin")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"install {APP}: succeeded ({APP} 1.0 (")
    listed = json.loads(kiki("app", *sock, "list", "--json").stdout)
    assert [a["version"] for a in listed["apps"]] == ["1.0"]
    tree = tmp_path / "app"
    (tree / "lib" / "m00" / "f00000.py").write_text("2.0")
    (tree / "kiki-app.json").write_text(json.dumps({"id": APP, "version": "2.0"}))
    kiki(
        "app",
        "build",
        str(tree),
        "--repo",
        str(tmp_path / "published"),
        "--sign-key",
        str(tmp_path / "key"),
    )
    assert kiki("app", *sock, "update", APP).returncode == 0
    again = kiki("app", *sock, "update", APP)
    assert again.returncode == 1
    assert "up to date" in again.stderr
    assert kiki("app", *sock, "rollback", APP, "--json").returncode == 0
    table = kiki("app", *sock, "list").stdout.splitlines()
    assert table[0].split() == ["APP", "VERSION", "COMMIT", "ROLLBACK", "ORIGIN"]
    assert table[1].split()[:2] == [APP, "1.0"]
    history = json.loads(kiki("app", *sock, "history", APP, "--json").stdout)
    assert [e["action"] for e in history["entries"]] == ["rollback", "update", "install"]
    assert kiki("app", *sock, "remove", APP).returncode == 0
    assert json.loads(kiki("app", *sock, "list", "--json").stdout)["apps"] == []


def test_os_commands_show_bootcs_fields_and_reboot_only_when_told(
    updater_sock: Path, tmp_path: Path
) -> None:
    sock = ["--socket", str(updater_sock)]
    status = kiki("os", *sock, "status")
    assert status.returncode == 0, status.stderr
    doc = (BOOTC_TESTDATA / "spec-staged-booted.yaml").read_text()
    for line in status.stdout.splitlines():
        if line.startswith("  ") and ": " in line:
            assert line.split(": ", 1)[1] in doc  # every value shown is the document's
    assert "a reboot is pending" in status.stdout
    shown = json.loads(kiki("os", *sock, "status", "--json").stdout)
    assert [d["staged"] for d in shown["deployments"]] == [True, False]
    assert kiki("os", *sock, "check").returncode == 0
    assert kiki("os", *sock, "upgrade").returncode == 0
    assert kiki("os", *sock, "switch", "quay.io/example/x:2", "--apply").returncode == 0
    log = (tmp_path / "bootc" / "bootc-args.log").read_text().splitlines()
    asked = [json.loads(line) for line in log if not line.startswith('["status"')]
    assert asked == [
        ["upgrade", "--check"],
        ["upgrade"],
        ["switch", "--apply", "quay.io/example/x:2"],
    ]


@pytest.mark.parametrize("flag", [["--allow-breaking"], ["--lexicons", "/usr/share"]])
def test_directory_install_flags_are_refused_with_remote(flag: list[str]) -> None:
    run = kiki("app", "--socket", "/nonexistent.sock", "install", APP, "--remote", "origin", *flag)
    assert run.returncode == 2
    assert "not with --remote" in run.stderr


def test_install_from_a_directory_goes_through_the_updater(
    updater_sock: Path, tmp_path: Path
) -> None:
    """One way to install an app: a directory is published into the updater's local archive
    and installed from it (installed already: updated), signed, health-gated, with a rollback
    target, as an install from a remote."""
    sock = ["--socket", str(updater_sock)]
    local = "org.example.local"
    tree = make_app_tree(tmp_path / "local-app", local, "1.0")
    run = kiki("app", *sock, "install", str(tree))
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"installed {local} 1.0 (")
    (app,) = [a for a in json.loads(kiki("app", *sock, "list", "--json").stdout)["apps"]]
    assert app["origin"].startswith(f"local:app/{local}/")
    # the install's release is in the updater's own archive, not in the caller's directory
    assert not list(tree.glob("**/objects"))
    (tree / "lib" / "m00" / "f00000.py").write_text("1.1")
    (tree / "kiki-app.json").write_text(json.dumps({"id": local, "version": "1.1"}))
    again = json.loads(kiki("app", *sock, "install", str(tree), "--json").stdout)
    assert (again["ok"], again["version"], again["operation"]["state"]) == (
        True,
        "1.1",
        "succeeded",
    )
    history = json.loads(kiki("app", *sock, "history", local, "--json").stdout)
    assert [e["action"] for e in history["entries"]] == ["update", "install"]
    # a version whose health check fails is refused and the one before stays
    health = tree / "bin" / "health"
    health.write_text("#!/bin/sh\necho broken >&2\nexit 3\n")
    health.chmod(0o755)
    manifest = {"id": local, "version": "1.2", "health": {"command": ["bin/health"]}}
    (tree / "kiki-app.json").write_text(json.dumps(manifest))
    refused = kiki("app", *sock, "install", str(tree))
    assert refused.returncode == 1
    assert refused.stdout.startswith("refused: ")
    assert "health check" in refused.stdout
    listed = json.loads(kiki("app", *sock, "list", "--json").stdout)["apps"]
    assert [a["version"] for a in listed if a["appId"] == local] == ["1.1"]
    assert kiki("app", *sock, "rollback", local).returncode == 0
    listed = json.loads(kiki("app", *sock, "list", "--json").stdout)["apps"]
    assert [a["version"] for a in listed if a["appId"] == local] == ["1.0"]


def test_a_directory_install_reads_the_tree_through_the_callers_descriptor(
    updater_sock: Path, sockdir: Path, tmp_path: Path
) -> None:
    """The updater (root) reads the directory only through the descriptor ``kiki app install``
    opened and passed: a symlink in it is installed as a symlink, never followed (a root-only
    file it names stays out of the commit), and a FIFO is refused rather than read."""
    import os
    import subprocess

    sock = ["--socket", str(updater_sock)]
    local = "org.example.local"
    secret = tmp_path / "root-only"
    secret.write_text("ROOT-ONLY-SECRET-42")
    secret.chmod(0o600)
    tree = make_app_tree(tmp_path / "local-app", local, "1.0")
    (tree / "link").symlink_to(secret)
    run = kiki("app", *sock, "install", str(tree))
    assert run.returncode == 0, run.stderr
    current = sockdir / "state" / "updater" / "ostree" / "app" / local / "current"
    if not current.exists():  # the state directory's layout, whichever it is
        (current,) = (sockdir / "state").glob(f"**/app/{local}/current")
    assert os.readlink(current / "link") == str(secret)
    objects = subprocess.run(
        ["grep", "-rl", "ROOT-ONLY-SECRET-42", str(sockdir / "state")],
        capture_output=True,
        check=False,
    )
    assert objects.stdout == b""
    os.mkfifo(tree / "pipe")
    (tree / "kiki-app.json").write_text(json.dumps({"id": local, "version": "1.1"}))
    refused = kiki("app", *sock, "install", str(tree))
    assert refused.returncode == 1
    assert refused.stdout.startswith("refused: ")
    assert "pipe" in refused.stdout


def kiki_on_a_terminal(*args: str) -> tuple[int, str, str]:
    """``kiki`` with its stderr a terminal (a pseudo-terminal read here) and its stdout a
    pipe: (exit status, what the terminal showed, stdout)."""
    import os
    import subprocess
    import threading

    from kikitest import VENV_BIN

    master, slave = os.openpty()
    proc = subprocess.Popen(
        [str(VENV_BIN / "kiki"), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
    )
    os.close(slave)
    shown = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the last holder of the terminal's other end is gone
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        reader.join(timeout=10)
        os.close(master)
    return proc.returncode, shown.decode(errors="replace"), out.decode()


def test_a_directory_install_draws_its_phases_on_a_terminal_only(
    updater_sock: Path, tmp_path: Path
) -> None:
    """``kiki app install DIR`` draws the updater's progress as a pull's is drawn: the phases
    from the copy of the tree to the swap, on a terminal; piped or with ``--json``, none."""
    sock = ["--socket", str(updater_sock)]
    local = "org.example.local"
    tree = make_app_tree(tmp_path / "local-app", local, "1.0", files=200)
    status, shown, out = kiki_on_a_terminal("app", *sock, "install", str(tree))
    assert status == 0, shown
    assert out.startswith(f"installed {local} 1.0 (")
    drawn = [line for line in shown.split("\r") if line.startswith("\x1b[K[")]
    phases = [line.split("% ", 1)[1].split(" ")[0] for line in drawn if "% " in line]
    seen = [p for p in ("copy", "build", "verify", "pull", "install", "swap") if p in phases]
    assert seen == ["copy", "build", "verify", "pull", "install", "swap"], shown
    assert phases.index("copy") < phases.index("build") < phases.index("pull")
    assert drawn[0].startswith("\x1b[K[" + "." * 30 + "]")
    assert shown.endswith("\r\x1b[K")  # the bar is cleared at the end
    (tree / "kiki-app.json").write_text(json.dumps({"id": local, "version": "1.1"}))
    status, shown, out = kiki_on_a_terminal("app", *sock, "install", str(tree), "--json")
    assert status == 0, shown
    assert json.loads(out)["version"] == "1.1"
    assert shown == ""
    (tree / "kiki-app.json").write_text(json.dumps({"id": local, "version": "1.2"}))
    piped = kiki("app", *sock, "install", str(tree))
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == ""


def test_install_from_a_directory_without_an_updater_says_so(tmp_path: Path) -> None:
    tree = make_app_tree(tmp_path / "app", APP, "1.0")
    run = kiki("app", "--socket", str(tmp_path / "none.sock"), "install", str(tree))
    assert run.returncode == 1
    assert run.stderr.startswith("kiki app: ")
    assert not (tmp_path / "state").exists()


def test_a_directory_install_reports_what_its_install_step_installed(
    updater_sock: Path, tmp_path: Path
) -> None:
    """The updater's install step (lexicons, bindings, components stored once by hash) is part
    of the operation it returns; ``kiki app install DIR`` prints it, and ``--json`` has it."""
    from test_schema_cli import make_app

    sock = ["--socket", str(updater_sock)]
    first = make_app(tmp_path, "org.example.carded", b"shared card", ["dev.kiki.media.seek"])
    run = kiki("app", *sock, "install", str(first))
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("installed org.example.carded 1.0.0 (")
    assert lines[1].startswith("bindings: ")
    assert lines[1].endswith(" (import kiki_apps.org_example_carded)")
    assert lines[2] == "components: 1 stored, 0 already installed by another app"
    second = make_app(tmp_path, "org.example.radio", b"shared card", ["dev.kiki.media.seek"])
    answer = json.loads(kiki("app", *sock, "install", str(second), "--json").stdout)
    assert answer["ok"] is True, answer
    report = answer["install"]
    assert report == answer["operation"]["install"]
    assert report["module"] == "kiki_apps.org_example_radio"
    assert report["lexicons"] == ["org.example.radio.card", "org.example.radio.search"]
    assert report["componentsStored"] == []
    (shared,) = report["componentsShared"]
    assert len(shared) == 64
    # how its (absent) health check ran is not reported: there was none
    assert "health" not in answer["operation"]


@pytest.mark.parametrize(
    ("report", "lines"),
    [
        (None, []),
        ({}, []),
        ({"module": "kiki_apps.x"}, ["bindings: import kiki_apps.x"]),
        ({"bindings": "/b.py"}, ["bindings: /b.py"]),
        ({"componentsStored": ["a"]}, ["components: 1 stored"]),
        (
            {"module": "m", "bindings": "/b.py", "componentsStored": [], "componentsShared": ["s"]},
            [
                "bindings: /b.py (import m)",
                "components: 0 stored, 1 already installed by another app",
            ],
        ),
    ],
)
def test_an_install_report_missing_a_field_is_printed_without_it(
    report: dict[str, Any] | None, lines: list[str]
) -> None:
    # an updater's answer (another version's) may lack a field: the install has happened
    from kiki_cli.app import install_lines

    assert install_lines(report) == lines
