"""The dashboard's committed files are what its sources build to from the lockfile, byte for
byte: the sources copied into a clean directory, `npm ci` there from the committed
package-lock.json (never the checkout's node_modules, which may hold anything), and
`node build.mjs` into a fresh directory."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parents[3]
SOURCE = ROOT / "services" / "sync-relay" / "dashboard"
COMMITTED = ROOT / "services" / "sync-relay" / "src" / "kiki_sync_relay" / "dashboard" / "assets"
# What the build reads; node_modules is made by `npm ci`, README.md is not built.
INPUTS = ("package.json", "package-lock.json", "build.mjs", "src")


def test_rebuilding_from_the_lockfile_reproduces_the_committed_files(tmp_path: Path) -> None:
    clean = tmp_path / "dashboard"
    clean.mkdir()
    for name in INPUTS:
        source = SOURCE / name
        if source.is_dir():
            shutil.copytree(source, clean / name)
        else:
            shutil.copy2(source, clean / name)
    # --prefer-offline: the packages come from npm's cache when it has them (the lockfile's
    # integrity hashes are checked either way).
    subprocess.run(
        ["npm", "ci", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=clean,
        check=True,
        capture_output=True,
        timeout=600,
    )
    out = tmp_path / "assets"
    subprocess.run(
        ["node", "build.mjs"],
        cwd=clean,
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
