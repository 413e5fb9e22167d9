"""`kiki up` in a desktop session starts the AT-SPI bridge: the session's apps are in the tree.

Interop: a real Xvfb, session bus, accessibility bus and gtk3-widget-factory (the shared
``atspi_desktop``); `kiki up` runs its own a11y-server in a directory of its own and, as it uses
the session's own bus, the bridge beside it.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from kikitest import VENV_BIN
from kikitest.atspi_fixtures import AtspiDesktop, atspi_desktop  # noqa: F401

pytestmark = pytest.mark.interop

WITHIN = 60.0


def test_up_in_a_desktop_session_bridges_its_apps(atspi_desktop: AtspiDesktop) -> None:  # noqa: F811
    rundir = Path(tempfile.mkdtemp(prefix="kiki-up-", dir="/tmp"))
    env = atspi_desktop.app_env()
    env["KIKI_RUNTIME_DIR"] = str(rundir)
    log = rundir / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(
            [
                str(VENV_BIN / "kiki"),
                "up",
                "a11y-server",
                "--runtime-dir",
                str(rundir),
                "--state-dir",
                str(rundir / "state"),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + WITHIN
        dumped = ""
        while time.monotonic() < deadline and 'application "gtk3-widget-factory"' not in dumped:
            time.sleep(0.2)
            assert up.poll() is None, log.read_text()
            dumped = subprocess.run(
                [str(VENV_BIN / "kiki"), "a11y", "dump"],
                env=env,
                capture_output=True,
                text=True,
                timeout=WITHIN,
                check=False,
            ).stdout
        assert 'application "gtk3-widget-factory"' in dumped, log.read_text()
        assert "started the AT-SPI bridge" in log.read_text()
    finally:
        up.terminate()
        status = up.wait(timeout=WITHIN)
    assert status == 0, log.read_text()
