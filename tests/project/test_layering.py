"""The layering lint: libkiki imports no service, no service imports another.

``.importlinter`` states the rule as import-linter contracts; ``just lint`` runs them. Here the
linter runs on this tree (it must pass) and on copies of it with one import planted (it must
fail, naming the contract and the import), so the lint is known to be able to fail.
"""

from __future__ import annotations

import configparser
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kikitest import REPO

pytestmark = pytest.mark.integration

CONFIG = REPO / ".importlinter"
SERVICE_PACKAGES = sorted(p.name for p in REPO.glob("services/*/src/kiki_*") if p.is_dir())
LIBKIKI_CONTRACT = "libkiki imports no service"
SERVICES_CONTRACT = "no service imports another"


def lint(src_dirs: list[Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` of the venv under test, as ``just lint`` runs it in ``cwd`` (which
    holds the ``.importlinter`` to check), reading the packages from ``src_dirs``."""
    if importlib.util.find_spec("importlinter") is None:
        pytest.fail("import-linter is not in the venv under test: `uv add --dev import-linter`")
    # The copies come first on the path, before the venv's own (editable) packages.
    path = [*map(str, src_dirs), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command; "
            "sys.exit(lint_imports_command())",
            "--no-cache",
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def tree_src_dirs() -> list[Path]:
    return [REPO / "libkiki" / "src", *sorted(REPO.glob("services/*/src"))]


def copy_of_tree(tmp_path: Path) -> Path:
    """The packages of libkiki and every service, side by side in one directory, and the
    linter's configuration beside it."""
    shutil.copy(CONFIG, tmp_path / CONFIG.name)
    src = tmp_path / "src"
    for package in [REPO / "libkiki/src/libkiki", *(REPO.glob("services/*/src/kiki_*"))]:
        shutil.copytree(package, src / package.name, ignore=shutil.ignore_patterns("__pycache__"))
    return src


def plant(module: Path, statement: str) -> None:
    # Inside a function, as the import that moved the audit format to libkiki was: a lazy
    # import is an import all the same.
    with module.open("a") as f:
        f.write(f"\n\ndef _planted_for_the_layering_test() -> None:\n    {statement}\n")


def test_the_tree_keeps_both_contracts() -> None:
    done = lint(tree_src_dirs(), REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{LIBKIKI_CONTRACT} KEPT" in done.stdout
    assert f"{SERVICES_CONTRACT} KEPT" in done.stdout
    assert "0 broken" in done.stdout


def test_libkiki_importing_a_service_breaks_the_lint(tmp_path: Path) -> None:
    src = copy_of_tree(tmp_path)
    plant(src / "libkiki/cli/tools.py", "import kiki_tool_broker.audit")
    done = lint([src], tmp_path)
    assert done.returncode != 0
    assert f"{LIBKIKI_CONTRACT} BROKEN" in done.stdout
    assert f"{SERVICES_CONTRACT} KEPT" in done.stdout
    assert "libkiki.cli.tools -> kiki_tool_broker.audit" in done.stdout


def test_a_service_importing_another_breaks_the_lint(tmp_path: Path) -> None:
    src = copy_of_tree(tmp_path)
    plant(src / "kiki_updater/__main__.py", "import kiki_sync_relay")
    done = lint([src], tmp_path)
    assert done.returncode != 0
    assert f"{LIBKIKI_CONTRACT} KEPT" in done.stdout
    assert f"{SERVICES_CONTRACT} BROKEN" in done.stdout
    assert "kiki_updater.__main__ -> kiki_sync_relay" in done.stdout


def test_every_service_is_named_in_both_contracts() -> None:
    # A contract over a list of packages says nothing of a service left out of the list.
    assert len(SERVICE_PACKAGES) >= 6
    config = configparser.ConfigParser()
    config.read(CONFIG)

    def names(section: str, key: str) -> list[str]:
        return sorted(config[section][key].split())

    assert names("importlinter", "root_packages") == sorted(["libkiki", *SERVICE_PACKAGES])
    forbidden = "importlinter:contract:libkiki-imports-no-service"
    assert names(forbidden, "source_modules") == ["libkiki"]
    assert names(forbidden, "forbidden_modules") == SERVICE_PACKAGES
    independent = "importlinter:contract:services-are-independent"
    assert names(independent, "modules") == SERVICE_PACKAGES
