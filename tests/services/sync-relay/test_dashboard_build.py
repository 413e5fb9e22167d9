"""The dashboard's committed files are what its sources build to from the lockfile, byte for
byte: `npm ci` (scripts/install-node-deps) and `node build.mjs` into a fresh directory."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parents[3]
SOURCE = ROOT / "services" / "sync-relay" / "dashboard"
COMMITTED = ROOT / "services" / "sync-relay" / "src" / "kiki_sync_relay" / "dashboard" / "assets"


def test_rebuilding_from_the_lockfile_reproduces_the_committed_files(tmp_path: Path) -> None:
    subprocess.run(
        [str(ROOT / "scripts" / "install-node-deps"), str(SOURCE.relative_to(ROOT))],
        check=True,
        timeout=600,
    )
    out = tmp_path / "assets"
    subprocess.run(
        ["node", "build.mjs"],
        cwd=SOURCE,
        env={**os.environ, "KIKI_DASHBOARD_OUT": str(out)},
        check=True,
        capture_output=True,
        timeout=300,
    )
    built = {p.name: p.read_bytes() for p in out.iterdir()}
    committed = {p.name: p.read_bytes() for p in COMMITTED.iterdir()}
    assert sorted(built) == sorted(committed), (
        "rebuild the dashboard: cd " + str(SOURCE) + (" && npm ci && npm run build")
    )
    for name, data in built.items():
        assert data == committed[name], f"{name} differs from a fresh build"
