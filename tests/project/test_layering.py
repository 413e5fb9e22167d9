"""The layering lint: libkiki imports no service, no service imports another, nothing of the
runtime imports the applications (kiki_cli) and they import no service.

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
RUNTIME_CONTRACT = "the runtime imports no application"
APPLICATIONS_CONTRACT = "the applications import no service"
CONTRACTS = (LIBKIKI_CONTRACT, SERVICES_CONTRACT, RUNTIME_CONTRACT, APPLICATIONS_CONTRACT)


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
    return [REPO / "libkiki" / "src", REPO / "cli" / "src", *sorted(REPO.glob("services/*/src"))]


def copy_of_tree(tmp_path: Path) -> Path:
    """The packages of libkiki, the applications and every service, side by side in one
    directory, and the linter's configuration beside it."""
    shutil.copy(CONFIG, tmp_path / CONFIG.name)
    src = tmp_path / "src"
    packages = [REPO / "libkiki/src/libkiki", REPO / "cli/src/kiki_cli"]
    for package in [*packages, *(REPO.glob("services/*/src/kiki_*"))]:
        shutil.copytree(package, src / package.name, ignore=shutil.ignore_patterns("__pycache__"))
    return src


def plant(package: Path, statement: str) -> None:
    """A module ``planted`` in ``package`` making one import. A module nothing imports: planted
    in one that others import, the import would also reach them (import-linter follows chains),
    and break more contracts than the one under test."""
    # Inside a function, as the import that moved the audit format to libkiki was: a lazy
    # import is an import all the same.
    (package / "planted.py").write_text(f"def planted() -> None:\n    {statement}\n")


def broken_only(done: subprocess.CompletedProcess[str], contract: str, line: str) -> None:
    """The lint failed on ``contract`` alone, naming the planted import ``line``."""
    assert done.returncode != 0
    for other in CONTRACTS:
        assert f"{other} {'BROKEN' if other == contract else 'KEPT'}" in done.stdout, done.stdout
    assert line in done.stdout


def test_the_tree_keeps_every_contract() -> None:
    done = lint(tree_src_dirs(), REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    for contract in CONTRACTS:
        assert f"{contract} KEPT" in done.stdout
    assert "0 broken" in done.stdout


def test_libkiki_importing_a_service_breaks_the_lint(tmp_path: Path) -> None:
    src = copy_of_tree(tmp_path)
    plant(src / "libkiki", "import kiki_tool_broker")
    broken_only(lint([src], tmp_path), LIBKIKI_CONTRACT, "libkiki.planted -> kiki_tool_broker")


def test_a_service_importing_another_breaks_the_lint(tmp_path: Path) -> None:
    src = copy_of_tree(tmp_path)
    plant(src / "kiki_updater", "import kiki_sync_relay")
    broken_only(lint([src], tmp_path), SERVICES_CONTRACT, "kiki_updater.planted -> kiki_sync_relay")


@pytest.mark.parametrize("package", ["libkiki", "kiki_tool_broker"])
def test_the_runtime_importing_an_application_breaks_the_lint(tmp_path: Path, package: str) -> None:
    src = copy_of_tree(tmp_path)
    plant(src / package, "import kiki_cli.health")
    broken_only(lint([src], tmp_path), RUNTIME_CONTRACT, f"{package}.planted -> kiki_cli.health")


def test_an_application_importing_a_service_breaks_the_lint(tmp_path: Path) -> None:
    src = copy_of_tree(tmp_path)
    plant(src / "kiki_cli", "import kiki_tool_broker")
    broken_only(
        lint([src], tmp_path), APPLICATIONS_CONTRACT, "kiki_cli.planted -> kiki_tool_broker"
    )


def test_every_service_is_named_in_every_contract() -> None:
    # A contract over a list of packages says nothing of a service left out of the list.
    assert len(SERVICE_PACKAGES) >= 6
    config = configparser.ConfigParser()
    config.read(CONFIG)

    def names(section: str, key: str) -> list[str]:
        return sorted(config[section][key].split())

    assert names("importlinter", "root_packages") == sorted(
        ["libkiki", "kiki_cli", *SERVICE_PACKAGES]
    )
    forbidden = "importlinter:contract:libkiki-imports-no-service"
    assert names(forbidden, "source_modules") == ["libkiki"]
    assert names(forbidden, "forbidden_modules") == SERVICE_PACKAGES
    independent = "importlinter:contract:services-are-independent"
    assert names(independent, "modules") == SERVICE_PACKAGES
    runtime = "importlinter:contract:runtime-imports-no-application"
    assert names(runtime, "source_modules") == sorted(["libkiki", *SERVICE_PACKAGES])
    assert names(runtime, "forbidden_modules") == ["kiki_cli"]
    applications = "importlinter:contract:applications-import-no-service"
    assert names(applications, "source_modules") == ["kiki_cli"]
    assert names(applications, "forbidden_modules") == SERVICE_PACKAGES
