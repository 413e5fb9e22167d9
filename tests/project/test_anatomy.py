"""Every service has the same anatomy (CONTRIBUTING.md, "One service, one anatomy").

``config.py`` (its settings), ``core.py`` (the decisions, sans I/O), ``server.py`` (moves bytes
and futures), ``__main__.py``; ``tools.py`` when it provides broker tools. A core that imported
an event loop, a socket or a thread would no longer be testable without them: checked here on
every import statement, also one inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from kikitest import REPO

pytestmark = pytest.mark.unit

REQUIRED = ("__main__.py", "config.py", "server.py")
# dbus_fast's message and signature types are plain values; its bus connections are not.
IO_MODULES = ("asyncio", "socket", "selectors", "subprocess", "threading", "dbus_fast.aio")
IO_MODULES_DOT = tuple(f"{name}." for name in IO_MODULES)
SERVER_MAX_LINES = 400


def packages(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*/src/kiki_*") if p.is_dir())


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, wherever the import stands."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def io_imports(path: Path) -> list[str]:
    return sorted(n for n in imported(path) if n in IO_MODULES or n.startswith(IO_MODULES_DOT))


def faults(root: Path) -> list[str]:
    found: list[str] = []
    for package in packages(root):
        for name in REQUIRED:
            if not (package / name).is_file():
                found.append(f"{package.name}: no {name}")
        core = package / "core.py"
        if not core.is_file():
            found.append(f"{package.name}: no core.py")
        elif io := io_imports(core):
            found.append(f"{package.name}: core.py imports {', '.join(io)}")
        server = package / "server.py"
        if server.is_file() and len(server.read_text().splitlines()) > SERVER_MAX_LINES:
            found.append(f"{package.name}: server.py over {SERVER_MAX_LINES} lines")
    return found


def test_every_service_has_the_same_files_and_its_core_does_no_io() -> None:
    assert len(packages(REPO / "services")) == 6
    assert faults(REPO / "services") == []


def test_the_check_finds_a_missing_file_an_io_core_and_a_long_server(tmp_path: Path) -> None:
    good = tmp_path / "good" / "src" / "kiki_good"
    bad = tmp_path / "bad" / "src" / "kiki_bad"
    for package in (good, bad):
        package.mkdir(parents=True)
        (package / "__main__.py").write_text("")
        (package / "server.py").write_text("import asyncio\n")
        (package / "core.py").write_text("import json\n")
    (good / "config.py").write_text("")
    (bad / "core.py").write_text("def f() -> None:\n    from asyncio.tasks import sleep\n")
    (bad / "server.py").write_text("x = 1\n" * (SERVER_MAX_LINES + 1))
    coreless = tmp_path / "coreless" / "src" / "kiki_coreless"
    coreless.mkdir(parents=True)
    for name in ("__main__.py", "config.py", "server.py"):
        (coreless / name).write_text("")
    assert faults(tmp_path) == [
        "kiki_bad: no config.py",
        "kiki_bad: core.py imports asyncio.tasks",
        f"kiki_bad: server.py over {SERVER_MAX_LINES} lines",
        "kiki_coreless: no core.py",
    ]
