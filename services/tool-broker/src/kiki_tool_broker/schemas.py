"""Tools as their lexicons describe them: kind, JSON Schemas for MCP, and validation.

A tool's NSID names a lexicon whose ``main`` definition is a ``query`` (read-only; its input is
its ``parameters``) or a ``procedure`` (side effects; its input is ``input.schema``). Its output
is ``output.schema``. A procedure is *destructive* (MCP ``destructiveHint``) when its lexicon
also defines the token ``#destructive`` — Lexicon has no annotation field, and a token is a
definition any lexicon tool can read.

Lexicons come from the search path (Kiki's published ones, then installed apps') and from
providers, who may send their own with a registration; those live as long as the provider.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from libkiki.errors import InvalidParams, KikiError, LexiconError, ValidationError
from libkiki.lexicon.model import (
    ArrayType,
    BlobType,
    Body,
    BooleanType,
    BytesType,
    CidLinkType,
    IntegerType,
    NullType,
    ObjectType,
    ParamsType,
    ProcedureType,
    QueryType,
    RecordType,
    RefType,
    StringType,
    TokenType,
    UnionType,
    UnknownType,
)
from libkiki.lexicon.registry import Registry

log = logging.getLogger(__name__)

Kind = Literal["query", "procedure"]
JSON = dict[str, Any]


@dataclass(frozen=True)
class ToolSchema:
    nsid: str
    kind: Kind
    description: str
    input_schema: JSON
    output_schema: JSON | None
    destructive: bool
    registry: Registry = field(repr=False)
    has_output: bool = False

    def validate_input(self, arguments: JSON) -> None:
        validator = self.registry.validator(self.nsid)
        try:
            if self.kind == "query":
                validator.params(arguments)
            else:
                validator.input(arguments)
        except ValidationError as exc:
            raise ValidationError(_prefix("input", exc.path), exc.rule) from None

    def validate_output(self, output: Any) -> None:
        if not self.has_output:
            return
        try:
            self.registry.validator(self.nsid).output(output)
        except ValidationError as exc:
            raise ValidationError(_prefix("output", exc.path), exc.rule) from None


def _prefix(root: str, path: str) -> str:
    if not path or path in (root, "input", "output", "params", "parameters"):
        return root
    for head in ("input.", "output.", "params.", "parameters."):
        if path.startswith(head):
            return root + "." + path[len(head) :]
    return f"{root}.{path}"


class Catalog:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._owned: dict[int, list[str]] = {}
        self._cache: dict[str, ToolSchema] = {}

    @classmethod
    def load(cls) -> Catalog:
        registry, errors = Registry.from_search_path()
        for error in errors:
            # A broken lexicon only disables the tools that need it; the broker still starts.
            log.warning("lexicon skipped: %s", error)
        return cls(registry)

    def add_documents(self, docs: Iterable[Any], *, owner: int) -> None:
        added = []
        for raw in docs:
            problems = self.registry.add_json(raw, source=f"provider {owner}")
            if problems:
                raise InvalidParams(
                    "; ".join(str(p) for p in problems), data={"lexicon": _doc_id(raw)}
                )
            added.append(_doc_id(raw))
        problems = self.registry.check(added)
        if problems:
            raise InvalidParams("; ".join(str(p) for p in problems))
        self._owned.setdefault(owner, []).extend(a for a in added if a)
        self._cache.clear()

    def drop_owner(self, owner: int) -> None:
        # Provider lexicons stay registered: another provider may serve the same NSID later with
        # the same document, and a different document is refused as a conflict anyway.
        self._owned.pop(owner, None)

    def tool(self, nsid: str) -> ToolSchema:
        found = self._cache.get(nsid)
        if found is not None:
            return found
        try:
            _, main = self.registry.resolve(nsid)
        except LexiconError as exc:
            raise InvalidParams(
                f"{nsid}: no published lexicon ({exc.rule})", data={"nsid": nsid}
            ) from None
        if not isinstance(main, QueryType | ProcedureType):
            raise InvalidParams(
                f"{nsid}: its lexicon is not a query or procedure, so it is not a tool"
            )
        doc = self.registry.document(nsid)
        converter = _JsonSchema(self.registry, nsid)
        if isinstance(main, QueryType):
            input_schema = converter.params(main.parameters)
        else:
            input_schema = converter.body(main.input)
        output_schema = converter.body(main.output) if main.output else None
        found = ToolSchema(
            nsid=nsid,
            kind="query" if isinstance(main, QueryType) else "procedure",
            description=main.description or doc.description or nsid,
            input_schema=converter.finish(input_schema),
            output_schema=converter.finish(output_schema) if output_schema else None,
            destructive=isinstance(main, ProcedureType)
            and isinstance(doc.defs.get("destructive"), TokenType),
            registry=self.registry,
            has_output=main.output is not None and main.output.schema is not None,
        )
        self._cache[nsid] = found
        return found


def _doc_id(raw: Any) -> str:
    return str(raw.get("id", "?")) if isinstance(raw, dict) else "?"


class _JsonSchema:
    """Lexicon types to JSON Schema (2020-12), refs as ``$defs`` so recursion stays finite."""

    def __init__(self, registry: Registry, context: str) -> None:
        self.registry = registry
        self.context = context
        self.defs: dict[str, JSON] = {}

    def finish(self, schema: JSON | None) -> JSON:
        schema = dict(schema or {"type": "object", "properties": {}})
        if schema.get("type") != "object":
            # MCP requires an object at the top; a ref or union is wrapped in allOf.
            schema = {"type": "object", "allOf": [schema]}
        if self.defs:
            schema["$defs"] = dict(self.defs)
        return schema

    def params(self, params: ParamsType | None) -> JSON:
        if params is None:
            return {"type": "object", "properties": {}, "additionalProperties": False}
        return self._object(params.properties, params.required, (), params.description)

    def body(self, body: Body | None) -> JSON:
        if body is None or body.schema is None:
            return {"type": "object", "properties": {}}
        return self.field(body.schema)

    def _object(
        self, props: Any, required: Iterable[str], nullable: Iterable[str], description: str | None
    ) -> JSON:
        nullables = set(nullable)
        properties = {}
        for name, ftype in props.items():
            schema = self.field(ftype)
            if name in nullables:
                schema = {"anyOf": [schema, {"type": "null"}]}
            properties[name] = schema
        out: JSON = {"type": "object", "properties": properties}
        if required:
            out["required"] = list(required)
        if description:
            out["description"] = description
        return out

    def field(self, t: Any) -> JSON:
        out: JSON
        match t:
            case NullType():
                out = {"type": "null"}
            case BooleanType():
                out = {"type": "boolean"}
                _copy(out, t, default="default", const="const")
            case IntegerType():
                out = {"type": "integer"}
                _copy(
                    out, t, minimum="minimum", maximum="maximum", default="default", const="const"
                )
                if t.enum is not None:
                    out["enum"] = list(t.enum)
            case StringType():
                out = {"type": "string"}
                _copy(
                    out,
                    t,
                    min_length="minLength",
                    max_length="maxLength",
                    default="default",
                    const="const",
                )
                if t.enum is not None:
                    out["enum"] = list(t.enum)
                if t.known_values:
                    out["examples"] = list(t.known_values)
                if t.format in ("datetime", "uri", "language"):
                    out["format"] = {"datetime": "date-time", "uri": "uri", "language": "language"}[
                        t.format
                    ]
                elif t.format:
                    out["x-lexicon-format"] = t.format
            case BytesType():
                out = {
                    "type": "object",
                    "properties": {"$bytes": {"type": "string"}},
                    "required": ["$bytes"],
                }
            case CidLinkType():
                out = {
                    "type": "object",
                    "properties": {"$link": {"type": "string"}},
                    "required": ["$link"],
                }
            case BlobType():
                out = {"type": "object", "properties": {"$type": {"const": "blob"}}}
            case UnknownType():
                out = {"type": "object"}
            case ArrayType():
                out = {"type": "array", "items": self.field(t.items)}
                _copy(out, t, min_length="minItems", max_length="maxItems")
            case ObjectType():
                out = self._object(t.properties, t.required, t.nullable, None)
            case RecordType():
                out = self.field(t.record)
            case RefType():
                out = self._ref(t.ref)
            case UnionType():
                options = [self._ref(r) for r in t.refs]
                out = {"anyOf": options if t.closed else [*options, {"type": "object"}]}
            case _:
                raise KikiError(f"{self.context}: cannot express {type(t).__name__} as JSON Schema")
        if getattr(t, "description", None) and "description" not in out:
            out["description"] = t.description
        return out

    def _ref(self, ref: str) -> JSON:
        key = ref.replace("#", ".")
        if key not in self.defs:
            self.defs[key] = {}  # placeholder first: a self-referencing type terminates
            _, target = self.registry.resolve(ref, self.context)
            if isinstance(target, TokenType):
                self.defs[key] = {"const": ref}
            else:
                self.defs[key] = self.field(target)
        return {"$ref": f"#/$defs/{key}"}


def _copy(out: JSON, t: Any, **names: str) -> None:
    for attr, key in names.items():
        value = getattr(t, attr)
        if value is not None:
            out[key] = value
