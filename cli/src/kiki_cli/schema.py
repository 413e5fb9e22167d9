"""``kiki schema``: lint, show, validate against, generate bindings for and compare lexicons."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

from libkiki.errors import KikiError, LexiconError, ValidationError
from libkiki.lexicon.codegen import generate
from libkiki.lexicon.compat import compare_sets
from libkiki.lexicon.files import MAX_FILE, read_json_file
from libkiki.lexicon.manifest import reachable_documents
from libkiki.lexicon.model import ProcedureType, QueryType, SubscriptionType
from libkiki.lexicon.registry import Registry

EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2


def register(sub: Any) -> None:
    p = sub.add_parser(
        "schema",
        help="work with Lexicon schemas",
        description="Lint, show, validate against, generate bindings for and compare Lexicon "
        "documents. Exit status 0 only on success.",
    )
    cmds = p.add_subparsers(dest="schema_command", metavar="SUBCOMMAND", required=True)

    def common(parser: argparse.ArgumentParser, *, lexicons: bool = True) -> None:
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        if lexicons:
            parser.add_argument(
                "--lexicons",
                action="append",
                type=Path,
                metavar="DIR",
                help="look lexicons up here instead of the default search path "
                "(repeatable; default: $KIKI_LEXICON_PATH, else Kiki's and installed apps')",
            )

    lint = cmds.add_parser("lint", help="check documents and their references")
    lint.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="file or directory")
    common(lint)
    lint.set_defaults(func=run_lint)

    show = cmds.add_parser("show", help="print a document or one definition")
    show.add_argument("ref", metavar="NSID[#def]")
    common(show)
    show.set_defaults(func=run_show)

    validate = cmds.add_parser("validate", help="validate JSON data against a definition")
    validate.add_argument("ref", metavar="NSID[#def]")
    validate.add_argument("file", metavar="FILE", help="JSON file, or - for stdin")
    validate.add_argument(
        "--part",
        choices=("params", "input", "output", "message"),
        help="for a method, which part (default: input of a procedure, params of a query, "
        "message of a subscription)",
    )
    common(validate)
    validate.set_defaults(func=run_validate)

    gen = cmds.add_parser("gen", help="generate pydantic bindings")
    gen.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="file or directory")
    gen.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    gen.add_argument("--module", default="lexicons", help="module name (default: lexicons)")
    common(gen)
    gen.set_defaults(func=run_gen)

    compat = cmds.add_parser("compat", help="report breaking changes from OLD to NEW")
    compat.add_argument("old", type=Path, metavar="OLD", help="file or directory")
    compat.add_argument("new", type=Path, metavar="NEW", help="file or directory")
    common(compat, lexicons=False)
    compat.set_defaults(func=run_compat)


# -- helpers shared with ``kiki app`` --------------------------------------------------------------


def emit(args: argparse.Namespace, payload: dict[str, Any], lines: Iterable[str]) -> None:
    if args.json:
        sys.stdout.write(orjson.dumps(payload).decode() + "\n")
    else:
        for line in lines:
            print(line)


def problem(error: KikiError) -> dict[str, Any]:
    data = error.data if isinstance(error.data, dict) else {}
    return {"message": error.message, **data}


def published(args: argparse.Namespace) -> tuple[Registry, list[LexiconError]]:
    return Registry.from_search_path(args.lexicons)


def load_paths(paths: Sequence[Path], registry: Registry) -> tuple[list[str], list[LexiconError]]:
    """Load files and directories into a fresh registry layered over ``registry``'s documents."""
    own = Registry()
    errors: list[LexiconError] = []
    for path in paths:
        if path.is_dir():
            errors.extend(own.load_dir(path))
        elif path.exists():
            try:
                errors.extend(own.add_json(read_json_file(path), str(path)))
            except LexiconError as exc:
                errors.append(exc)
        else:
            errors.append(LexiconError(str(path), "", "no such file or directory"))
    nsids = [d.id for d in own.documents()]
    for doc in own.documents():
        registry.add(doc, replace=True)
    return nsids, errors


# -- commands --------------------------------------------------------------------------------------


def run_lint(args: argparse.Namespace) -> int:
    registry, _ = published(args)
    nsids, errors = load_paths(args.paths, registry)
    errors.extend(registry.check(only=nsids))
    emit(
        args,
        {"ok": not errors, "documents": nsids, "problems": [problem(e) for e in errors]},
        [str(e) for e in errors] or [f"{len(nsids)} documents, no problems"],
    )
    return EXIT_FAILED if errors or not nsids else EXIT_OK


def run_show(args: argparse.Namespace) -> int:
    registry, _ = published(args)
    nsid, _, name = args.ref.partition("#")
    try:
        doc = registry.document(nsid)
        raw: Any = doc.raw
        if name:
            registry.resolve(args.ref)
            raw = doc.raw["defs"][name]
    except LexiconError as exc:
        emit(args, {"ok": False, "error": problem(exc)}, [])
        print(f"kiki schema show: {exc}", file=sys.stderr)
        return EXIT_ERROR
    option = 0 if args.json else orjson.OPT_INDENT_2
    sys.stdout.write(orjson.dumps(raw, option=option).decode() + "\n")
    return EXIT_OK


def run_validate(args: argparse.Namespace) -> int:
    registry, _ = published(args)
    try:
        if args.file == "-":
            if sys.stdin is None:  # started with fd 0 closed
                raise LexiconError("stdin", "", "is closed: nothing to validate")
            text = sys.stdin.buffer.read(MAX_FILE + 1)
            if len(text) > MAX_FILE:
                raise LexiconError("stdin", "", f"is larger than {MAX_FILE >> 20} MiB")
            data = orjson.loads(text)
        else:
            data = read_json_file(Path(args.file))
    except LexiconError as exc:
        print(f"kiki schema validate: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (OSError, orjson.JSONDecodeError) as exc:
        print(f"kiki schema validate: cannot read {args.file}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    try:
        validator = registry.validator(args.ref)
        part = args.part or _default_part(validator.definition)
        validator.validate_part(part, data)
    except ValidationError as exc:
        emit(args, {"ok": False, **problem(exc)}, [f"invalid: {exc}"])
        return EXIT_FAILED
    except LexiconError as exc:
        emit(args, {"ok": False, "error": problem(exc)}, [])
        print(f"kiki schema validate: {exc}", file=sys.stderr)
        return EXIT_ERROR
    emit(args, {"ok": True}, [f"valid {validator.ref}{' ' + part if part else ''}"])
    return EXIT_OK


def _default_part(definition: object) -> str:
    if isinstance(definition, ProcedureType):
        return "input"
    if isinstance(definition, QueryType):
        return "params"
    if isinstance(definition, SubscriptionType):
        return "message"
    return ""


def run_gen(args: argparse.Namespace) -> int:
    registry, _ = published(args)
    nsids, errors = load_paths(args.paths, registry)
    errors.extend(registry.check(only=nsids))
    if errors or not nsids:
        emit(args, {"ok": False, "problems": [problem(e) for e in errors]}, map(str, errors))
        if not nsids:
            print("kiki schema gen: no lexicon documents found", file=sys.stderr)
        return EXIT_FAILED
    if not args.module.isidentifier():
        print(f"kiki schema gen: {args.module!r} is not a module name", file=sys.stderr)
        return EXIT_ERROR
    command = " ".join(["kiki schema gen", *map(str, args.paths), "--out", str(args.out)])
    if args.module != "lexicons":
        command += f" --module {args.module}"
    source = generate(registry, reachable_documents(registry, nsids), command=command)
    target = args.out / f"{args.module}.py"
    # Whole or not at all: an importer never sees half a module.
    partial = target.with_name(f".{target.name}.tmp")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        partial.write_text(source)
        os.replace(partial, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        where = exc.filename or target
        print(f"kiki schema gen: cannot write {where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    emit(args, {"ok": True, "module": str(target), "documents": nsids}, [f"wrote {target}"])
    return EXIT_OK


def run_compat(args: argparse.Namespace) -> int:
    sides: list[Registry] = []
    for path in (args.old, args.new):
        registry = Registry()
        _, errors = load_paths([path], registry)
        if errors:
            emit(args, {"ok": False, "problems": [problem(e) for e in errors]}, map(str, errors))
            return EXIT_ERROR
        sides.append(registry)
    old, new = ({d.id: d for d in r.documents()} for r in sides)
    breaks = compare_sets(old, new)
    emit(
        args,
        {"ok": not breaks, "breaking": [b.as_dict() for b in breaks]},
        [str(b) for b in breaks] or ["compatible"],
    )
    return EXIT_FAILED if breaks else EXIT_OK
