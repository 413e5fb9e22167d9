"""Generate pydantic v2 bindings for Lexicon documents: one self-contained, typed module.

One module rather than one per document because Lexicon documents refer to each other in cycles
(``app.bsky.feed.defs`` and ``app.bsky.actor.defs`` do), which Python imports cannot express;
inside one module every model can name every other, and the module rebuilds them all on import
so a broken reference fails at import, not at first use.

Output is a pure function of the documents (sorted by NSID, definitions with ``main`` first),
so regenerating unchanged lexicons changes nothing.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from pydantic import BaseModel

from libkiki.lexicon.model import (
    ArrayType,
    BlobType,
    Body,
    BooleanType,
    BytesType,
    CidLinkType,
    Def,
    FieldType,
    IntegerType,
    LexiconDoc,
    NullType,
    ObjectType,
    ParamsType,
    ProcedureType,
    QueryType,
    RecordType,
    RefType,
    StringType,
    SubscriptionType,
    TokenType,
    UnionType,
    UnknownType,
    canonical_ref,
    split_ref,
)
from libkiki.lexicon.registry import Registry

__all__ = ["class_name", "generate"]

# A field named like something its class's annotations use would shadow it there.
_USED_IN_ANNOTATIONS: Final = {"list", "dict", "string_rule", "bytes_rule", "blob_rule"}
_RESERVED: Final = (
    frozenset(dir(BaseModel))
    | {"lex_type", "union_discriminator", "only_member"}
    | _USED_IN_ANNOTATIONS
)

_PRELUDE: Final = """from __future__ import annotations

from typing import Annotated, Any, Final, Literal, Union

from pydantic import Field, StrictBool, StrictInt, StrictStr, Tag

from libkiki.lexicon.runtime import (
    Blob,
    Bytes,
    CidLink,
    LexModel,
    NotNull,
    OpenUnionMember,
    Unknown,
    blob_rule,
    bytes_rule,
    only_member,
    string_rule,
    union_discriminator,
)
"""


def _camel(text: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in re.split(r"[^a-zA-Z0-9]+", text) if p)


def class_name(ref: str) -> str:
    """``app.bsky.feed.defs#postView`` -> ``AppBskyFeedDefsPostView``; ``main`` adds nothing."""
    nsid, name = split_ref(ref)
    return _camel(nsid.replace(".", "-")) + ("" if name == "main" else _camel(name))


def _attr(name: str, taken: set[str]) -> str:
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()
    snake = re.sub(r"\W", "_", snake) or "field"
    if snake[0].isdigit():
        snake = "f_" + snake
    while keyword.iskeyword(snake) or snake in _RESERVED or snake in taken or snake.startswith("_"):
        snake = snake.lstrip("_") + "_" if snake.startswith("_") else snake + "_"
    taken.add(snake)
    return snake


def _args(**kwargs: object) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if v is not None)


@dataclass
class _Writer:
    registry: Registry
    blocks: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    models: dict[str, str] = field(default_factory=dict)  # canonical ref -> class
    used: set[str] = field(default_factory=set)
    reserved: set[str] = field(default_factory=set)  # the definitions' own class names
    constants: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    endpoints: dict[str, dict[str, str]] = field(default_factory=dict)

    def unique(self, name: str, *, own: bool = False) -> str:
        candidate, n = name, 2
        while candidate in self.used or (candidate in self.reserved and not own):
            candidate, n = f"{name}{n}", n + 1
            own = False
        self.used.add(candidate)
        return candidate

    # -- type expressions ----------------------------------------------------------------------

    def expr(
        self, node: FieldType, context: str, owner: str, prop: str, seen: frozenset[str]
    ) -> str:
        if isinstance(node, NullType):
            return "None"
        if isinstance(node, BooleanType):
            return f"Literal[{node.const!r}]" if node.const is not None else "StrictBool"
        if isinstance(node, IntegerType):
            return self.integer(node)
        if isinstance(node, StringType):
            return self.string(node)
        if isinstance(node, BytesType):
            rule = _args(min_length=node.min_length, max_length=node.max_length)
            return f"Annotated[Bytes, bytes_rule({rule})]" if rule else "Bytes"
        if isinstance(node, CidLinkType):
            return "CidLink"
        if isinstance(node, BlobType):
            rule = _args(accept=node.accept, max_size=node.max_size)
            return f"Annotated[Blob, blob_rule({rule})]" if rule else "Blob"
        if isinstance(node, UnknownType):
            return "Unknown"
        if isinstance(node, ArrayType):
            inner = self.expr(node.items, context, owner, prop + "Item", seen)
            rule = _args(min_length=node.min_length, max_length=node.max_length)
            return f"Annotated[list[{inner}], Field({rule})]" if rule else f"list[{inner}]"
        if isinstance(node, ObjectType):
            return self.model(self.unique(owner + _camel(prop)), node, context, None)
        if isinstance(node, RefType):
            return self.ref(node.ref, seen)
        return self.union(node, seen)

    def integer(self, node: IntegerType) -> str:
        if node.const is not None:
            return f"Literal[{node.const!r}]"
        if node.enum is not None:
            return f"Literal[{', '.join(map(repr, node.enum))}]"
        rule = _args(ge=node.minimum, le=node.maximum)
        return f"Annotated[StrictInt, Field({rule})]" if rule else "StrictInt"

    def string(self, node: StringType) -> str:
        if node.const is not None:
            return f"Literal[{node.const!r}]"
        if node.enum is not None:
            return f"Literal[{', '.join(map(repr, node.enum))}]"
        rule = _args(
            min_length=node.min_length,
            max_length=node.max_length,
            min_graphemes=node.min_graphemes,
            max_graphemes=node.max_graphemes,
            format=node.format,
        )
        return f"Annotated[StrictStr, string_rule({rule})]" if rule else "StrictStr"

    def ref(self, ref: str, seen: frozenset[str]) -> str:
        canonical, target = self.registry.resolve(ref)
        if isinstance(target, ObjectType | RecordType):
            return class_name(canonical)
        if isinstance(target, TokenType):
            return f"Literal[{canonical!r}]"
        if canonical in seen or not isinstance(target, _INLINE):
            return "Any"  # a named non-object type that contains itself has no finite form
        owner = class_name(canonical)
        return self.expr(target, split_ref(canonical)[0], owner, "", seen | {canonical})

    def union(self, node: UnionType, seen: frozenset[str]) -> str:
        if not node.refs:
            # An open union that names no member takes any object with a $type (the Lexicon
            # spec's open union; the validator agrees). A closed one with none does not lint.
            return "OpenUnionMember"
        refs = tuple(dict.fromkeys(node.refs))  # a member listed twice is one member (one tag)
        members = [f"Annotated[{self.ref(r, seen)}, Tag({r!r})]" for r in refs]
        if not node.closed:
            members.append('Annotated[OpenUnionMember, Tag("$open")]')
        if len(members) == 1:
            return f"Annotated[{self.ref(refs[0], seen)}, only_member({refs[0]!r})]"
        disc = f"union_discriminator({refs!r}, closed={node.closed})"
        return f"Annotated[Union[{', '.join(members)}], {disc}]"

    # -- classes -------------------------------------------------------------------------------

    def model(self, name: str, node: ObjectType | ParamsType, context: str, ref: str | None) -> str:
        lines = [f"class {name}(LexModel):"]
        if node.description:
            lines += [f"    {node.description!r}", ""]
        if ref is not None:
            lines.append(f'    lex_type: Literal[{ref!r}] = Field(default={ref!r}, alias="$type")')
        taken: set[str] = set()
        nullable = node.nullable if isinstance(node, ObjectType) else ()
        for prop, sub in node.properties.items():
            attr = _attr(prop, taken)
            annotation = self.expr(sub, context, name, prop, frozenset())
            required = prop in node.required
            default = getattr(sub, "default", None)
            if annotation != "None" and prop in nullable:
                annotation = f"{annotation} | None"
            elif annotation != "None" and not required and default is None:
                annotation = f"Annotated[{annotation} | None, NotNull]"
            kwargs: dict[str, object] = {}
            if not required:
                kwargs["default"] = default
            if attr != prop:
                kwargs["alias"] = prop
            if sub.description:
                kwargs["description"] = sub.description
            spec = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
            lines.append(
                f"    {attr}: {annotation} = Field({spec})" if spec else f"    {attr}: {annotation}"
            )
        if len(lines) == 1 or lines[-1] == "":
            lines.append("    pass")
        self.blocks.append("\n".join(lines))
        self.classes.append(name)
        if ref is not None:
            self.models[ref] = name
        return name

    def body(self, body: Body | None, ref: str, suffix: str) -> None:
        if body is None or body.schema is None:
            return
        name = self.unique(class_name(ref) + suffix)
        if isinstance(body.schema, ObjectType):
            self.model(name, body.schema, split_ref(ref)[0], None)
        else:
            expr = self.expr(body.schema, split_ref(ref)[0], name, "", frozenset())
            self.aliases.append(f"{name} = {expr}")
        self.endpoints.setdefault(ref, {})[suffix.lower()] = name

    def definition(self, ref: str, node: Def) -> None:
        if isinstance(node, ObjectType):
            self.model(self.unique(class_name(ref), own=True), node, split_ref(ref)[0], ref)
        elif isinstance(node, RecordType):
            self.model(self.unique(class_name(ref), own=True), node.record, ref, ref)
        elif isinstance(node, TokenType):
            const = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", class_name(ref)).upper()
            self.constants.append(f"{const}: Final = {ref!r}")
        elif isinstance(node, QueryType | ProcedureType | SubscriptionType):
            self.endpoints[ref] = {}
            if node.parameters is not None:
                name = self.unique(class_name(ref) + "Params")
                self.model(name, node.parameters, split_ref(ref)[0], None)
                self.endpoints[ref]["params"] = name
            if isinstance(node, ProcedureType):
                self.body(node.input, ref, "Input")
            if isinstance(node, QueryType | ProcedureType):
                self.body(node.output, ref, "Output")
            if isinstance(node, SubscriptionType):
                self.body(node.message, ref, "Message")
        elif isinstance(node, _INLINE):
            owner = self.unique(class_name(ref), own=True)
            expr = self.expr(node, split_ref(ref)[0], owner, "", frozenset({ref}))
            self.aliases.append(f"{owner} = {expr}")


_INLINE: Final = (
    NullType,
    BooleanType,
    IntegerType,
    StringType,
    BytesType,
    CidLinkType,
    BlobType,
    UnknownType,
    ArrayType,
    UnionType,
)


def generate(registry: Registry, nsids: Iterable[str] | None = None, *, command: str) -> str:
    """Python source for the documents ``nsids`` (default: all); their references must resolve
    within ``registry``. ``command`` is what the header tells readers to run to regenerate."""
    wanted = sorted(set(nsids) if nsids is not None else {d.id for d in registry.documents()})
    writer = _Writer(registry)
    docs: list[LexiconDoc] = [registry.document(n) for n in wanted]
    for doc in docs:  # reserve every definition's name before nested classes take any
        for name in doc.defs:
            writer.reserved.add(class_name(canonical_ref(doc.id, name)))
    for doc in docs:
        for name in sorted(doc.defs, key=lambda n: (n != "main", n)):
            writer.definition(canonical_ref(doc.id, name), doc.defs[name])
    header = [
        f"# generated by libkiki.lexicon.codegen; do not edit; regenerate with: {command}",
        "# ruff: noqa",
        '"""Pydantic v2 bindings for Lexicon documents (see DOCUMENTS)."""',
    ]
    listed = "".join(f"    {nsid!r},\n" for nsid in wanted)
    writer.constants.insert(0, f"DOCUMENTS: Final[tuple[str, ...]] = (\n{listed})")
    models = "".join(f"    {ref!r}: {name},\n" for ref, name in sorted(writer.models.items()))
    endpoints = "".join(
        f"    {ref!r}: {{{', '.join(f'{k!r}: {v}' for k, v in parts.items())}}},\n"
        for ref, parts in sorted(writer.endpoints.items())
    )
    classes = "".join(f"    {name},\n" for name in writer.classes)
    footer = [
        "# Named object and record definitions by canonical ref.",
        f"MODELS: Final[dict[str, type[LexModel]]] = {{\n{models}}}",
        "",
        "# XRPC methods: their params, input, output or message type by NSID.",
        f"ENDPOINTS: Final[dict[str, dict[str, Any]]] = {{\n{endpoints}}}",
        "",
        f"_ALL: Final[tuple[type[LexModel], ...]] = (\n{classes})",
        "for _model in _ALL:",
        "    _model.model_rebuild()",
    ]
    parts = [
        "\n".join(header),
        _PRELUDE,
        *writer.constants,
        *writer.blocks,
        *writer.aliases,
        "\n".join(footer),
    ]
    return "\n\n\n".join(p.strip("\n") for p in parts if p) + "\n"
