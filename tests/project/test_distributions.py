"""What each distribution of the workspace brings with it when installed.

import-linter sees imports between packages; what lands in an environment is what the
distributions depend on. A service's environment holds libkiki and the service: no service
depends on another or on the applications (kiki-cli), libkiki on none of them, and only kiki-cli
installs the ``kiki`` command.
"""

from __future__ import annotations

import re
import tomllib
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


def workspace_dependencies(directory: str) -> set[str]:
    """The workspace members ``directory``'s distribution depends on, by name."""
    names = {
        re.split(r"[\s<>=!~;\[]", d, maxsplit=1)[0] for d in project(directory)["dependencies"]
    }
    return names & MEMBERS


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
