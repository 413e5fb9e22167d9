"""Properties over generated documents and files: every lexicon that lints generates bindings
that import and accept what the validator accepts; ``kiki schema`` ends every input, however
broken, with a status and a message, never a traceback."""

from __future__ import annotations

import importlib.util
import itertools
import sys
import tempfile
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

import orjson
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiki_cli import main
from kikitest.lexicon_documents import INPUT_FILES, NSID, documents
from kikitest.lexicon_strategies import valid_data
from kikitest.lexicon_testdata import KIKI_LEXICONS
from libkiki.errors import ValidationError
from libkiki.lexicon import Registry, generate
from libkiki.lexicon.model import ObjectType, ProcedureType, QueryType, RecordType

pytestmark = pytest.mark.integration

_COUNTER = itertools.count()


def import_source(source: str, where: Path) -> ModuleType:
    name = f"gen_bindings_{next(_COUNTER)}"
    path = where / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def linted(raw: dict[str, Any]) -> Registry | None:
    registry = Registry()
    if registry.add_json(raw) or registry.check():
        return None
    return registry


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(raw=documents(), data=st.data())
def test_every_document_that_lints_generates_bindings_that_agree_with_the_validator(
    raw: dict[str, Any], data: st.DataObject
) -> None:
    registry = linted(raw)
    if registry is None:
        return
    with tempfile.TemporaryDirectory() as where:
        module = import_source(generate(registry, command="test"), Path(where))
    doc = registry.document(NSID)
    for name, node in doc.defs.items():
        ref = NSID if name == "main" else f"{NSID}#{name}"
        if isinstance(node, ObjectType | RecordType):
            model, schema = module.MODELS[ref], node
        elif isinstance(node, ProcedureType | QueryType):
            out = node.output.schema if node.output else None
            if not isinstance(out, ObjectType):
                continue
            model, schema = module.ENDPOINTS[ref]["output"], out
        else:
            continue
        value = data.draw(valid_data(registry, schema), label=ref)
        try:
            if isinstance(node, ProcedureType | QueryType):
                registry.validator(ref).output(value)
            else:
                registry.validator(ref).validate(value)
        except ValidationError:
            continue  # the generator's guess at valid data missed (a format and a length, say)
        model.model_validate(value)


def run_kiki(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """``kiki ARGV`` in this process: its status and what it said. Anything but SystemExit
    escaping ``main`` is the traceback a user would have seen."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    code = exit_info.value.code
    assert isinstance(code, int)
    out = capsys.readouterr()
    return code, out.out + out.err


@settings(
    max_examples=200,
    deadline=None,
    # capsys is read (and so emptied) after every command
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(content=INPUT_FILES, name=st.sampled_from(["doc.json", "doc.txt", "d"]))
def test_schema_commands_end_every_input_with_a_status_and_a_message(
    capsys: pytest.CaptureFixture[str], content: bytes, name: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        lexicons = where / "lexicons"
        lexicons.mkdir()
        path = lexicons / name
        path.write_bytes(content)
        (where / "kiki-app.json").write_bytes(content)  # an app directory, for kiki app
        known = ("--lexicons", str(KIKI_LEXICONS))
        for argv in (
            ("schema", "lint", str(path), *known),
            ("schema", "lint", str(lexicons), "--json", *known),
            ("schema", "gen", str(path), "--out", str(where / "out"), *known),
            ("schema", "compat", str(path), str(KIKI_LEXICONS)),
            ("schema", "compat", str(lexicons), str(lexicons), "--json"),
            ("schema", "validate", "dev.kiki.media.defs#track", str(path), *known),
            ("schema", "validate", "dev.kiki.media.playPause", str(path), "--json", *known),
            ("schema", "show", NSID, "--lexicons", str(lexicons)),
            ("app", "validate", str(where), *known),
        ):
            code, said = run_kiki(capsys, *argv)
            if code != 0:
                assert said.strip(), f"{argv} exited {code} without a word"


@pytest.mark.parametrize("ref", ["", "#", "nope", "a..b#c", "\x00", "dev.kiki.media.defs#nope"])
def test_show_and_validate_refuse_bad_references(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, ref: str
) -> None:
    data = tmp_path / "data.json"
    data.write_bytes(b"{}")
    known = ("--lexicons", str(KIKI_LEXICONS))
    for argv in (("schema", "show", ref, *known), ("schema", "validate", ref, str(data), *known)):
        code, said = run_kiki(capsys, *argv)
        assert code != 0
        assert said.strip()


def test_an_open_union_without_references_takes_any_typed_object(tmp_path: Path) -> None:
    # Published lexicons have these (found outside shared/testdata); codegen indexed refs[0].
    raw = {
        "lexicon": 1,
        "id": NSID,
        "defs": {"main": {"type": "object", "properties": {"a": {"type": "union", "refs": []}}}},
    }
    registry = linted(raw)
    assert registry is not None
    model = import_source(generate(registry, command="test"), tmp_path).MODELS[NSID]
    typed = {"a": {"$type": "com.example.other#thing", "x": 1}}
    model.model_validate(typed)
    registry.validator(NSID).validate(typed)
    for untyped in ({"a": {"x": 1}}, {"a": "text"}):
        with pytest.raises(ValueError, match="validation error"):
            model.model_validate(untyped)
        with pytest.raises(ValidationError):
            registry.validator(NSID).validate(untyped)


@pytest.mark.parametrize("levels", [70, 450, 1100])
@pytest.mark.parametrize("shape", ["array", "object"])
def test_a_document_nested_too_deeply_is_a_lint_problem(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, levels: int, shape: str
) -> None:
    node = '{"type":"string"}'
    for _ in range(levels):
        node = (
            f'{{"type":"array","items":{node}}}'
            if shape == "array"
            else f'{{"type":"object","properties":{{"a":{node}}}}}'
        )
    path = tmp_path / "deep.json"
    path.write_text(f'{{"lexicon":1,"id":"{NSID}","defs":{{"main":{node}}}}}')
    code, said = run_kiki(capsys, "schema", "lint", str(path), "--json")
    assert code == 1
    problems = orjson.loads(said)["problems"]
    assert any("nested too deeply" in p["message"] for p in problems) or any(
        "cannot be read as JSON" in p["message"]
        for p in problems  # orjson's own limit
    ), problems


def test_a_huge_file_is_refused_with_a_message(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "huge.json"
    defs = {f"d{i}": {"type": "string", "description": "x" * 1000} for i in range(20_000)}
    path.write_bytes(orjson.dumps({"lexicon": 1, "id": NSID, "defs": defs}))
    code, said = run_kiki(capsys, "schema", "lint", str(path))
    assert code == 1
    assert "huge.json" in said


def chain(length: int, kind: str) -> dict[str, Any]:
    """``main`` refers to d0, d0 to d1, … to a string: every definition shallow, the chain long."""
    defs: dict[str, Any] = {
        f"d{i}": {"type": "array", "items": {"type": "ref", "ref": f"#d{i + 1}"}}
        if kind == "array"
        else {"type": "object", "properties": {"a": {"type": "ref", "ref": f"#d{i + 1}"}}}
        for i in range(length)
    }
    defs[f"d{length}"] = {"type": "string"}
    defs["main"] = {"type": "object", "properties": {"a": {"type": "ref", "ref": "#d0"}}}
    return {"lexicon": 1, "id": NSID, "defs": defs}


@pytest.mark.parametrize(("kind", "longest"), [("array", 62), ("object", 41)])
def test_a_chain_of_references_too_long_to_follow_is_a_lint_problem(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str, longest: int
) -> None:
    # The longest chain that lints generates bindings and validators, with room to spare on
    # the stack; one more step is refused; hundreds (a RecursionError before) too.
    registry = linted(chain(longest, kind))
    assert registry is not None
    import_source(generate(registry, command="test"), tmp_path)
    registry.validator(NSID)
    for length in (longest + 1, 600):
        path = tmp_path / f"chain{length}.json"
        path.write_bytes(orjson.dumps(chain(length, kind)))
        code, said = run_kiki(capsys, "schema", "gen", str(path), "--out", str(tmp_path / "o"))
        assert code == 1
        assert "steps deep (at most 128)" in said


@pytest.mark.parametrize("closed", [True, False])
def test_a_union_member_listed_twice_is_one_member(tmp_path: Path, closed: bool) -> None:
    # Two tags for one member broke the generated module's import (pydantic: missing ref).
    union = {"type": "union", "refs": ["#b", f"{NSID}#b"], "closed": closed}
    raw = {
        "lexicon": 1,
        "id": NSID,
        "defs": {"b": {"type": "object", "properties": {"a": union}}},
    }
    registry = linted(raw)
    assert registry is not None
    model = import_source(generate(registry, command="test"), tmp_path).MODELS[f"{NSID}#b"]
    value = {"a": {"$type": f"{NSID}#b", "a": {"$type": f"{NSID}#b"}}}
    registry.validator(f"{NSID}#b").validate(value)
    assert model.model_validate(value).model_dump(by_alias=True)["a"] == value["a"]


def test_property_names_starting_with_a_dollar_are_refused() -> None:
    # A "$type" property beside the object's own $type: the binding refused what validated.
    props = {"$type": {"type": "null"}, "$link": {"type": "string"}, "ok": {"type": "string"}}
    raw = {"lexicon": 1, "id": NSID, "defs": {"main": {"type": "object", "properties": props}}}
    problems = Registry().add_json(raw)
    assert sorted(p.path for p in problems) == [
        "defs.main.properties.$link",
        "defs.main.properties.$type",
    ]
    assert all("reserved" in p.rule for p in problems)


@pytest.mark.parametrize("kind", [[], {}, ["record"], 1, None])
def test_a_definition_whose_type_is_not_a_string_is_a_lint_problem(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: Any
) -> None:
    path = tmp_path / "doc.json"
    path.write_bytes(orjson.dumps({"lexicon": 1, "id": NSID, "defs": {"a": {"type": kind}}}))
    code, said = run_kiki(capsys, "schema", "lint", str(path))
    assert code == 1
    assert "defs.a.type: is required and must be a string" in said


@pytest.mark.parametrize("out", ["file", "file/sub", "dir-is-module"])
def test_gen_into_a_place_it_cannot_write_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, out: str
) -> None:
    (tmp_path / "file").write_text("")
    (tmp_path / "dir-is-module" / "lexicons.py").mkdir(parents=True)
    code, said = run_kiki(capsys, "schema", "gen", str(KIKI_LEXICONS), "--out", str(tmp_path / out))
    assert code == 2
    assert said.startswith("kiki schema gen: cannot write ")
    assert not list(tmp_path.rglob("*.tmp"))  # nothing half-written left behind


def test_app_install_into_a_state_dir_it_cannot_write_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("KIKI_STATE_DIR", str(tmp_path / "file" / "state"))
    app = tmp_path / "app"
    (app / "lexicons").mkdir(parents=True)
    manifest = {"id": "org.example.x", "version": "1.0.0", "name": "x"}
    (app / "kiki-app.json").write_bytes(orjson.dumps(manifest))
    # the install step (the updater runs it; kiki app install DIR goes through the updater)
    from libkiki.lexicon.install import install_app
    from libkiki.lexicon.registry import Registry

    with pytest.raises(NotADirectoryError):
        install_app(app, tmp_path / "file" / "state", Registry.from_search_path([KIKI_LEXICONS])[0])


def _stack_depth() -> int:
    frame: FrameType | None = sys._getframe()
    depth = 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    return depth


def test_a_directory_tree_nested_deeper_than_the_stack_is_walked(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # rglob recursed once per level: a tree deeper than the room left on the stack was a
    # RecursionError. The room is made small here (250 frames, the tree 400 deep) rather than
    # the tree huge: pytest's own clean-up of tmp_path recurses per level too.
    levels = [tmp_path / "tree"]
    for _ in range(400):
        levels.append(levels[-1] / "d")
    for level in levels:
        level.mkdir()
    token = {"lexicon": 1, "id": NSID, "defs": {"main": {"type": "token"}}}
    (levels[-1] / "doc.json").write_bytes(orjson.dumps(token))
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(_stack_depth() + 250)
    try:
        code, said = run_kiki(capsys, "schema", "lint", str(levels[0]), "--json")
    finally:
        sys.setrecursionlimit(limit)
        # Gone deepest first, here: pytest removes old temporary directories by recursion, and
        # a later session's clean-up nearer its stack's limit (under coverage, say) is no
        # place for a tree this deep.
        (levels[-1] / "doc.json").unlink()
        for level in reversed(levels):
            level.rmdir()
    assert code == 0, said
    assert orjson.loads(said)["documents"] == [NSID]


@pytest.mark.parametrize("closed", [True, False])
def test_a_union_of_one_member_requires_its_type_in_the_binding_as_in_the_validator(
    tmp_path: Path, closed: bool
) -> None:
    # A closed union of one member was generated as the bare model, whose $type defaults:
    # the binding took a member without $type that the validator refused.
    union = {"type": "union", "refs": ["#b"], "closed": closed}
    b = {"type": "object", "properties": {"x": {"type": "integer"}}}
    raw = {
        "lexicon": 1,
        "id": NSID,
        "defs": {"b": b, "main": {"type": "object", "properties": {"a": union}}},
    }
    registry = linted(raw)
    assert registry is not None
    model = import_source(generate(registry, command="test"), tmp_path).MODELS[NSID]
    validator = registry.validator(NSID)
    for value in ({"a": {"x": 1}}, {"a": {"$type": "org.example.other", "x": 1}}):
        expected_ok = not closed and value["a"].get("$type") is not None
        assert valid(lambda v=value: validator.validate(v)) is expected_ok
        assert valid(lambda v=value: model.model_validate(v)) is expected_ok
    typed = {"a": {"$type": f"{NSID}#b", "x": 1}}
    validator.validate(typed)
    assert model.model_validate(typed).model_dump(by_alias=True)["a"] == typed["a"]


def valid(check: Any) -> bool:
    try:
        check()
    except (ValidationError, pydantic.ValidationError):
        return False
    return True
