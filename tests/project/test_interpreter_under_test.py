"""The processes the tests start run the Python the tests run on.

``just test-image-python`` runs the fast tiers on CPython 3.13 from ``.venv-3.13``; a test that
started ``kiki`` or a service from ``.venv`` would quietly test 3.11 instead.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from kikitest import VENV_BIN

pytestmark = pytest.mark.integration

SERVICES = [
    "kiki-tool-broker",
    "kiki-a11y-server",
    "kiki-sensor-publisher",
    "kiki-dbus-gateway",
    "kiki-sync-relay",
    "kiki-updater",
]


def _interpreter_version(script: str) -> str:
    # The console script's own shebang line names the interpreter it starts.
    shebang = (VENV_BIN / script).read_text().splitlines()[0]
    assert shebang.startswith("#!"), shebang
    interpreter = shebang[2:].strip()
    result = subprocess.run(
        [interpreter, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip()


@pytest.mark.parametrize("script", ["kiki", *SERVICES])
def test_started_programs_run_the_python_under_test(script: str) -> None:
    assert _interpreter_version(script) == f"{sys.version_info[0]}.{sys.version_info[1]}"
