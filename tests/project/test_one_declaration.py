"""No source repeats what ``libkiki.constellation`` declares: a socket file's name, a bus name
or object path, the relay's default address. Each such value is written once, in the table;
every other module reads it from there (``libkiki.paths``, ``ctx.listen()``, ``ctx.spec``).

A string literal equal to a declared value (docstrings and comments, which only mention one,
are not) is reported with its file and line. The scan is also run on a planted file, so that it
is known to be able to fail.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

from kikitest import REPO
from libkiki.constellation import SERVICES

pytestmark = pytest.mark.unit

TABLE = REPO / "libkiki" / "src" / "libkiki" / "constellation.py"
# The runtime library, the applications (kiki-cli) and every service.
ROOTS = [REPO / "libkiki" / "src", REPO / "cli" / "src", *sorted(REPO.glob("services/*/src"))]


def declared() -> set[str | int]:
    values: set[str | int] = set()
    for spec in SERVICES:
        values.update(v for v in (spec.socket_file, spec.bus_name, spec.object_path) if v)
        if spec.address is not None:
            host, port = spec.address
            values.update((f"{host}:{port}", port))
    return values


def repeated(files: Iterable[Path], values: set[str | int]) -> list[str]:
    found = []
    for path in files:
        if path == TABLE or "_generated" in path.parts:
            continue
        hits = [
            node
            for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(node, ast.Constant)
            and type(node.value) in (str, int)
            and node.value in values
        ]
        found += [f"{path}:{n.lineno}: {n.value!r}" for n in sorted(hits, key=lambda n: n.lineno)]
    return found


def test_no_source_repeats_a_declared_value() -> None:
    files = [path for root in ROOTS for path in sorted(root.rglob("*.py"))]
    assert len(files) > 50
    assert repeated(files, declared()) == []


def test_a_repeated_value_is_reported(tmp_path: Path) -> None:
    planted = tmp_path / "server.py"
    planted.write_text(
        '"""Serves tools.sock."""\n'  # a mention in a docstring is not a repetition
        'listener = bind("tools.sock")\n'
        "port = 8765\n"
        "pid = 8765.0\n"
    )
    assert repeated([planted], declared()) == [
        f"{planted}:2: 'tools.sock'",
        f"{planted}:3: 8765",
    ]
