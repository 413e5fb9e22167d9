"""A provider whose tool takes and returns the generated pydantic bindings."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from kikitest.broker_lexicons import ECHO, LEXICONS, TEXT, procedure
from libkiki.lexicon import Registry, generate
from libkiki.tools import ToolCall, ToolClient, ToolProvider

pytestmark = pytest.mark.integration


def bindings(
    tmp_path: Path, docs: list[dict[str, Any]] = LEXICONS, name: str = "test_tool_bindings"
) -> ModuleType:
    registry = Registry()
    for doc in docs:
        assert registry.add_json(doc) == []
    path = tmp_path / f"{name}.py"
    path.write_text(generate(registry, command="kiki schema gen LEXICONS --out OUT"))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


async def test_tool_with_generated_bindings(broker: tuple[Path, Any], tmp_path: Path) -> None:
    path, _ = broker
    gen = bindings(tmp_path)
    echo_input = gen.ENDPOINTS[ECHO]["input"]
    echo_output = gen.ENDPOINTS[ECHO]["output"]
    seen: list[Any] = []
    provider = ToolProvider(path, lexicons=LEXICONS)

    async def echo(args: Any, call: ToolCall) -> Any:
        seen.append(args)
        return echo_output(text=args.text[::-1])

    # What a module importing its bindings at the top would have written as the annotations.
    echo.__annotations__.update({"args": echo_input, "call": ToolCall, "return": echo_output})
    provider.tool(ECHO)(echo)
    async with asyncio.timeout(20), provider.connect(), ToolClient(path) as client:
        assert await client.call(ECHO, {"text": "abc"}) == {"text": "cba"}
    assert isinstance(seen[0], echo_input)


NULLABLE = "org.example.test.nullable"
NULLABLE_LEXICON = procedure(NULLABLE, TEXT, {**TEXT, "note": {"type": "string"}}, ["text"])
NULLABLE_LEXICON["defs"]["main"]["output"]["schema"].update(
    required=["text", "note"], nullable=["note"]
)


async def test_a_required_nullable_output_field_may_be_none(
    broker: tuple[Path, Any], tmp_path: Path
) -> None:
    path, _ = broker
    gen = bindings(tmp_path, [NULLABLE_LEXICON], "nullable_bindings")
    output = gen.ENDPOINTS[NULLABLE]["output"]
    provider = ToolProvider(path, lexicons=[NULLABLE_LEXICON])

    @provider.tool(NULLABLE)
    async def nullable(args: dict[str, Any], call: ToolCall) -> Any:
        return output(text=args["text"], note=None)  # valid for the binding and the lexicon

    async with asyncio.timeout(20), provider.connect(), ToolClient(path) as client:
        assert await client.call(NULLABLE, {"text": "abc"}) == {"text": "abc", "note": None}


def test_unresolvable_hints_and_sync_functions_are_refused() -> None:
    provider = ToolProvider("/nonexistent.sock")

    async def bad(args: NoSuchBinding, call: ToolCall) -> None:  # type: ignore[name-defined]  # noqa: F821
        return None

    with pytest.raises(TypeError, match="cannot resolve the type hints of bad"):
        provider.tool(ECHO)(bad)

    def not_async(args: dict[str, Any], call: ToolCall) -> None:
        return None

    with pytest.raises(TypeError, match="must be an async function"):
        provider.tool(ECHO)(not_async)  # type: ignore[type-var]
