"""Validating a typical tool input against its lexicon: Kiki's validator vs the baselines.

Run: ``.venv/bin/python tests/bench/bench_lexicon.py [--repeats N]``. Prints µs per validation
(median of the repeats) for, in the same run:

* Kiki's compiled validator (the hot path the tool broker uses), also with ``orjson.loads``;
* pydantic v2 validating the generated binding (``kiki schema gen``);
* ``jsonschema`` (Draft 2020-12) on an equivalent JSON Schema derived from the same lexicon;

unpinned, then pinned to one CPU (``sched_setaffinity``), with the ratio to Kiki's validator.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import orjson

from libkiki.lexicon import Registry, generate
from libkiki.lexicon.model import (
    ArrayType,
    BooleanType,
    Def,
    IntegerType,
    ObjectType,
    ProcedureType,
    RefType,
    StringType,
)

REPO = Path(__file__).resolve().parents[2]
NSID = "dev.kiki.notify.notify"
INPUT: dict[str, Any] = {
    "appName": "player",
    "summary": "Now playing: Blue in Green",
    "body": "Miles Davis — Kind of Blue (1959)",
    "urgency": "normal",
    "actions": [{"key": "skip", "label": "Skip"}, {"key": "pause", "label": "Pause"}],
    "expireTimeoutMs": 5000,
}


def json_schema(registry: Registry, node: Def) -> dict[str, Any]:
    """The JSON Schema equivalent of the lexicon subset the benchmark input uses.

    Graphemes are approximated by ``maxLength`` (code points): JSON Schema cannot count them.
    """
    if isinstance(node, RefType):
        return json_schema(registry, registry.resolve(node.ref)[1])
    if isinstance(node, StringType):
        out: dict[str, Any] = {"type": "string"}
        if node.enum is not None:
            out["enum"] = list(node.enum)
        limits = [m for m in (node.max_length, node.max_graphemes) if m is not None]
        if limits:
            out["maxLength"] = min(limits)
        if node.min_length is not None:
            out["minLength"] = node.min_length
        return out
    if isinstance(node, IntegerType):
        out = {"type": "integer"}
        if node.minimum is not None:
            out["minimum"] = node.minimum
        if node.maximum is not None:
            out["maximum"] = node.maximum
        return out
    if isinstance(node, BooleanType):
        return {"type": "boolean"}
    if isinstance(node, ArrayType):
        out = {"type": "array", "items": json_schema(registry, node.items)}
        if node.max_length is not None:
            out["maxItems"] = node.max_length
        return out
    if isinstance(node, ObjectType):
        return {
            "type": "object",
            "required": list(node.required),
            "properties": {k: json_schema(registry, v) for k, v in node.properties.items()},
        }
    raise TypeError(f"no JSON Schema for {node!r}")


def median_us(func: Callable[[], object], repeats: int) -> float:
    number = 2000
    func()
    runs = timeit.repeat(func, number=number, repeat=repeats)
    return statistics.median(runs) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 repeats")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 3

    registry = Registry()
    assert registry.load_dir(REPO / "schemas" / "lexicons") == []
    validator = registry.validator(NSID)
    definition = registry.document(NSID).defs["main"]
    assert isinstance(definition, ProcedureType)
    assert definition.input is not None
    assert definition.input.schema is not None
    raw = orjson.dumps(INPUT)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench_bindings.py"
        path.write_text(generate(registry, command="kiki schema gen schemas/lexicons --out DIR"))
        spec = importlib.util.spec_from_file_location("bench_bindings", path)
        assert spec is not None
        assert spec.loader is not None
        bindings = importlib.util.module_from_spec(spec)
        sys.modules["bench_bindings"] = bindings
        spec.loader.exec_module(bindings)
    model = bindings.ENDPOINTS[NSID]["input"]

    schema = json_schema(registry, definition.input.schema)
    js = jsonschema.Draft202012Validator(schema)
    js.validate(INPUT)
    model.model_validate(INPUT)
    validator.input(INPUT)

    cases: list[tuple[str, Callable[[], object]]] = [
        ("kiki validator", lambda: validator.input(INPUT)),
        ("kiki: orjson.loads + validate", lambda: validator.input(orjson.loads(raw))),
        ("pydantic (generated binding)", lambda: model.model_validate(INPUT)),
        ("pydantic: model_validate_json", lambda: model.model_validate_json(raw)),
        ("jsonschema Draft 2020-12", lambda: js.validate(INPUT)),
    ]
    print(f"{NSID} input, {len(raw)} bytes; median of {args.repeats} repeats")
    modes: list[tuple[str, set[int] | None]] = [("unpinned", None)]
    if hasattr(os, "sched_setaffinity"):
        modes.append(("pinned cpu0", {0}))
    for mode, cpus in modes:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        print(f"\n{mode}:")
        print(f"  {'validator':<32} {'µs/call':>9} {'x kiki':>8}")
        base = 0.0
        for name, func in cases:
            us = median_us(func, args.repeats)
            base = base or us
            print(f"  {name:<32} {us:>9.2f} {us / base:>8.1f}")


if __name__ == "__main__":
    main()
