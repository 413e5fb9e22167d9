"""What a ``kiki`` start imports: only what the command being run needs.

Each case runs the console script's ``main`` in a fresh interpreter and reads ``sys.modules`` as
it exits; the heavy ones (JSON-RPC dispatch, JSON Schema, FlatBuffers and numpy,
the lexicon compiler, importlib.metadata) stay out of the starts that do not use them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from kiki_cli import GROUPS, build_parser, command_of
from kikitest import REPO

pytestmark = pytest.mark.integration

HEAVY = {
    "jsonrpcserver",
    "jsonschema",
    "attrs",
    "oslash",
    "flatbuffers",
    "numpy",
    "pydantic",
    "importlib.metadata",
    "libkiki.lexicon",
    "libkiki.rpc",
    "kiki_cli.health",
    "libkiki.a11y.wire",
    "asyncio",
}


def imported(*argv: str) -> tuple[set[str], str]:
    """The modules a ``kiki *argv`` start has imported when it exits, and its stdout."""
    # What the console script runs, in a fresh interpreter; the module list goes to stderr at
    # exit, after the command's own output (kiki's stderr wrapper is gone by then).
    script = (
        "import sys\n"
        "try:\n"
        "    from kiki_cli import main\n"
        "    main()\n"
        "finally:\n"
        "    sys.__stderr__.write('MODULES ' + ' '.join(sorted(sys.modules)) + '\\n')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    listing = [line for line in run.stderr.splitlines() if line.startswith("MODULES ")]
    assert len(listing) == 1, run.stderr
    return set(listing[0].split()[1:]), run.stdout


def test_help_imports_nothing_heavy() -> None:
    modules, out = imported("--help")
    assert modules & HEAVY == set()
    assert not any(m.startswith("kiki_cli.") and m != "kiki_cli.common" for m in modules)
    for group in GROUPS:
        assert group in out


def test_version_reads_the_installed_metadata() -> None:
    modules, out = imported("--version")
    assert out == f"kiki {version('kiki-cli')}\n"
    assert "importlib.metadata" in modules


@pytest.mark.parametrize(
    ("argv", "heavy"),
    [
        # Probing a service over JSON-RPC does not need jsonrpcserver's dispatch.
        (("status", "--help"), {"jsonrpcserver", "jsonschema", "libkiki.lexicon"}),
        # kiki mcp reads the wire helpers of libkiki.rpc.messages, not the asyncio layer.
        (
            ("mcp", "--help"),
            {"jsonrpcserver", "flatbuffers", "libkiki.lexicon", "libkiki.rpc.connection"},
        ),
        (("-v", "up", "--help"), {"jsonrpcserver", "flatbuffers", "libkiki.lexicon"}),
    ],
)
def test_a_command_imports_its_own_group_only(argv: tuple[str, ...], heavy: set[str]) -> None:
    modules, _ = imported(*argv)
    command = command_of(argv)
    assert f"kiki_cli.{command}" in modules
    others = {f"kiki_cli.{g}" for g in GROUPS if g != command}
    assert modules & (others | heavy) == set()


def test_the_static_table_says_what_every_group_registers() -> None:
    # The one-line helps kiki --help lists without importing the groups are theirs, word for word.
    lazy, full = build_parser(), build_parser(every=True)
    assert lazy.format_help() == full.format_help()
    sub = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == list(GROUPS)


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        ((), None),
        (("--help",), None),
        (("-vv", "status", "--json"), "status"),
        (("--verbose", "tools", "call", "x"), "tools"),
        (("-v", "--", "status"), "status"),
        (("--",), None),
        (("bogus",), "bogus"),
    ],
)
def test_command_of(argv: tuple[str, ...], command: str | None) -> None:
    assert command_of(argv) == command


SERVICE_PACKAGES = sorted(p.name for p in REPO.glob("services/*/src/kiki_*") if p.is_dir())


@pytest.mark.parametrize("package", SERVICE_PACKAGES)
def test_a_service_starts_without_jsonrpcservers_dispatch(package: str) -> None:
    # Everything a service's main imports before serving; jsonrpcserver (and its jsonschema)
    # comes in only with the first call that its dispatch handles (an unknown method, say).
    script = f"import sys\nimport {package}.__main__\nprint(' '.join(sorted(sys.modules)))\n"
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    modules = set(run.stdout.split())
    assert f"{package}.server" in modules
    assert modules & {"jsonrpcserver", "jsonschema", "oslash"} == set()
    # Reading lexicon documents (the broker) needs neither the code generator, its pydantic
    # models, the compatibility rules, the compiled validators nor the regex module.
    assert modules & LEXICON_EXTRAS == set()
    # The a11y-server reads frames with libkiki.flatbuf: flatbuffers' runtime (and the numpy it
    # imports where numpy is installed) is for the tests' generated builders only.
    assert modules & {"flatbuffers", "numpy", "libkiki._generated.a11y_generated"} == set()


def test_status_of_the_a11y_server_reads_its_frames_without_flatbuffers(tmp_path: Path) -> None:
    modules, out = imported("status", "--json", "--runtime-dir", str(tmp_path), "a11y-server")
    assert '"ok": false' in out
    assert "libkiki.a11y.wire" in modules
    assert modules & {"flatbuffers", "numpy"} == set()


LEXICON_EXTRAS = {
    "libkiki.lexicon.codegen",
    "libkiki.lexicon.runtime",
    "libkiki.lexicon.compat",
    "libkiki.lexicon.validator",
    "libkiki.lexicon.checks",
    "regex",
}


def modules_after(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``statement``."""
    script = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))\n"
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return set(run.stdout.split())


def test_reading_lexicons_imports_no_generator_nor_validator() -> None:
    modules = modules_after(
        "from libkiki.lexicon.registry import Registry\n"
        "from libkiki.lexicon.loader import lint_document\n"
        "Registry.from_search_path()"
    )
    assert "libkiki.lexicon.model" in modules
    assert modules & (LEXICON_EXTRAS | {"pydantic"}) == set()


@pytest.mark.parametrize(
    ("name", "home"),
    [
        ("generate", "libkiki.lexicon.codegen"),
        ("compare", "libkiki.lexicon.compat"),
        ("Validator", "libkiki.lexicon.validator"),
        ("Registry", "libkiki.lexicon.registry"),
    ],
)
def test_the_lexicon_package_imports_a_name_home_on_first_use(name: str, home: str) -> None:
    modules = modules_after(
        f"import libkiki.lexicon\nassert {home!r} not in sys.modules\n"
        f"from libkiki.lexicon import {name}"
    )
    assert home in modules


def test_counting_graphemes_imports_regex_then() -> None:
    before = modules_after("from libkiki.lexicon import formats")
    after = modules_after("from libkiki.lexicon import formats\nformats.grapheme_count('e\u0301')")
    assert "regex" not in before
    assert "regex" in after


def test_status_of_one_service_imports_only_its_channel(tmp_path: Path) -> None:
    # The broker is not running there: the probe fails (exit 1) after the imports it needed.
    modules, out = imported("status", "--json", "--runtime-dir", str(tmp_path), "tool-broker")
    assert '"ok": false' in out
    assert "libkiki.rpc.connection" in modules
    assert modules & {"libkiki.a11y.wire", "flatbuffers", "numpy", "jsonrpcserver"} == set()
    # It reads what `kiki up` recorded without the supervisor's machinery.
    assert "kiki_cli.launcher.state" in modules
    assert (
        modules & {f"kiki_cli.launcher.{m}" for m in ("supervisor", "process", "demo_keeper")}
        == set()
    )
    assert modules & {"libkiki.backoff", "libkiki.private_dir", "libkiki.sockets"} == set()


def test_the_service_runner_imports_no_package_metadata() -> None:
    # libkiki's version is read when a getInfo asks for it; the configuration's pydantic (which
    # brings importlib.metadata for its plugins) comes with service_main, not with the runner.
    modules = modules_after("import libkiki.service")
    assert modules & {"importlib.metadata", "pydantic", "jsonrpcserver", "libkiki.lexicon"} == set()


def test_identifying_a_peer_needs_ctypes_only_for_a_peer_in_many_groups() -> None:
    assert "ctypes" not in modules_after("import libkiki.peer")
