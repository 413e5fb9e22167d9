"""What each distribution of the workspace brings with it when installed.

import-linter sees imports between packages; what lands in an environment is what the
distributions depend on. A service's environment holds libkiki and the service: no service
depends on another or on the applications (kiki-cli), libkiki on none of them, and only kiki-cli
installs the ``kiki`` command.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from kikitest import REPO

pytestmark = pytest.mark.unit


def project(directory: str) -> dict[str, Any]:
    with (REPO / directory / "pyproject.toml").open("rb") as f:
        table: dict[str, Any] = tomllib.load(f)["project"]
    return table


SERVICES = sorted(
    p.parent.relative_to(REPO).as_posix() for p in REPO.glob("services/*/pyproject.toml")
)
MEMBERS = {project(d)["name"] for d in ["libkiki", "cli", *SERVICES]}


def dependencies(directory: str) -> set[str]:
    """Every distribution ``directory``'s distribution declares, by normalized name."""
    return {
        re.split(r"[\s<>=!~;\[]", d, maxsplit=1)[0].lower().replace("_", "-")
        for d in project(directory)["dependencies"]
    }


def workspace_dependencies(directory: str) -> set[str]:
    """The workspace members ``directory``'s distribution depends on, by name."""
    return dependencies(directory) & MEMBERS


DIRECTORY = {project(d)["name"]: d for d in ["libkiki", "cli", *SERVICES]}


def installed_with(directory: str) -> set[str]:
    """What installing ``directory``'s distribution brings that we declare: its own
    dependencies and, through the workspace members it depends on, theirs."""
    names = dependencies(directory)
    for member in names & MEMBERS:
        names |= installed_with(DIRECTORY[member])
    return names


# Distributions whose module is named otherwise: module -> distribution.
IMPORTED_AS = {"jwt": "pyjwt", "gi": "pygobject"}


def third_party_imports(source: Path) -> set[str]:
    """The distributions (by the module's top-level name, ``_`` as ``-``) that the code under
    ``source`` imports, anywhere in a file; typing-only names (``_typeshed``) are left out."""
    modules: set[str] = set()
    for path in source.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules.add(node.module.split(".")[0])
    ours = ("libkiki", "kiki_")
    return {
        IMPORTED_AS.get(m, m.replace("_", "-"))
        for m in modules
        if m not in sys.stdlib_module_names and not m.startswith((*ours, "_"))
    }


@pytest.mark.parametrize("directory", ["libkiki", "cli", *SERVICES])
def test_every_library_the_code_imports_is_declared(directory: str) -> None:
    # Without it, an environment holding that distribution alone fails at the import (kiki-cli
    # reads a11y frames through libkiki, which needs flatbuffers).
    missing = third_party_imports(REPO / directory / "src") - installed_with(directory)
    assert missing == set(), f"{directory} imports {sorted(missing)} without declaring them"


def test_the_members_are_the_runtime_the_applications_and_the_services() -> None:
    assert len(SERVICES) >= 6
    assert {project("libkiki")["name"], project("cli")["name"]} == {"libkiki", "kiki-cli"}


def test_libkiki_depends_on_no_member() -> None:
    assert workspace_dependencies("libkiki") == set()


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_depends_on_libkiki_alone(service: str) -> None:
    assert workspace_dependencies(service) == {"libkiki"}


def test_the_applications_depend_on_libkiki_alone() -> None:
    assert workspace_dependencies("cli") == {"libkiki"}


def test_only_the_applications_install_the_kiki_command() -> None:
    assert project("cli")["scripts"] == {"kiki": "kiki_cli:main"}
    for directory in ["libkiki", *SERVICES]:
        assert "kiki" not in project(directory).get("scripts", {}), directory
