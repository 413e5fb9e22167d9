"""Tools as their lexicons describe them: kind, JSON Schemas for MCP, and validation.

A tool's NSID names a lexicon whose ``main`` definition is a ``query`` (read-only; its input is
its ``parameters``) or a ``procedure`` (side effects; its input is ``input.schema``). Its output
is ``output.schema``. A procedure is *destructive* (MCP ``destructiveHint``) when its lexicon
also defines the token ``#destructive`` — Lexicon has no annotation field, and a token is a
definition any lexicon tool can read.

Lexicons come from the search path (Kiki's published ones, then installed apps'), which stay,
and from providers, who may send their own with a registration: those live as long as a
connection that sent them or a registered tool that needs them (see :class:`Catalog`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn

from libkiki.errors import Conflict, InvalidParams, KikiError, LexiconError, ValidationError
from libkiki.lexicon.loader import lint_document
from libkiki.lexicon.model import (
    ArrayType,
    BlobType,
    Body,
    BooleanType,
    BytesType,
    CidLinkType,
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
    split_ref,
)
from libkiki.lexicon.registry import Registry, iter_refs

if TYPE_CHECKING:
    from libkiki.lexicon.validator import Validator

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
    # The registry's validator for the tool, looked up at its first call (then on every call).
    _validator: Validator | None = field(default=None, init=False, repr=False, compare=False)

    def _checker(self) -> Validator:
        validator = self.registry.validator(self.nsid)
        object.__setattr__(self, "_validator", validator)
        return validator

    def validate_input(self, arguments: JSON) -> None:
        validator = self._validator or self._checker()
        try:
            if self.kind == "query":
                validator.params(arguments)
            else:
                validator.input(arguments)
        except ValidationError as exc:
            raise ValidationError(_prefix("input", exc.path), exc.rule) from None

    def validate_output(self, output: Any) -> None:
        if not self.has_output:
            # Nothing to check it against, and nothing an MCP client would take: structured
            # content is an object, and a list or a string there breaks the caller's SDK.
            if output is not None and output != {}:
                raise ValidationError("output", "must be absent: the lexicon declares no output")
            return
        try:
            (self._validator or self._checker()).output(output)
        except ValidationError as exc:
            raise ValidationError(_prefix("output", exc.path), exc.rule) from None


@dataclass(frozen=True)
class StreamSchema:
    """A subscription lexicon (an event stream): its params and each message are checked
    against it with the lexicon validator (a union message carries its ``$type``)."""

    nsid: str
    description: str
    registry: Registry = field(repr=False)
    _validator: Validator | None = field(default=None, init=False, repr=False, compare=False)

    def _checker(self) -> Validator:
        validator = self.registry.validator(self.nsid)
        object.__setattr__(self, "_validator", validator)
        return validator

    def validate_params(self, params: JSON) -> None:
        (self._validator or self._checker()).params(params)

    def validate_message(self, message: Any) -> None:
        (self._validator or self._checker()).message(message)


def _prefix(root: str, path: str) -> str:
    if not path or path in (root, "input", "output", "params", "parameters"):
        return root
    for head in ("input.", "output.", "params.", "parameters."):
        if path.startswith(head):
            return root + "." + path[len(head) :]
    return f"{root}.{path}"


MAX_DOCUMENTS_PER_PROVIDER: Final = 1024


class Catalog:
    """The lexicons tools are described by: installed ones, and those providers sent.

    Installed documents (the search path, read at start) are never dropped and never replaced.
    A document a provider sends with its registration is owned by the connection(s) that sent
    it, reference counted when several send identical content, and kept while any of them is
    connected or any registered tool still needs it (its own lexicon, or one it refers to, at
    any depth); then it is dropped, so an app that comes back with a changed lexicon is
    accepted. A registration is all or nothing: a document of a registration that fails is
    never kept. One connection may own at most ``max_documents`` documents.

    The registry in use is never changed in place: a change builds a new one and swaps it in,
    so a call in flight keeps validating against the documents it started with.
    """

    def __init__(
        self, registry: Registry, *, max_documents: int = MAX_DOCUMENTS_PER_PROVIDER
    ) -> None:
        self.registry = registry
        self.max_documents = max_documents
        self._installed = frozenset(doc.id for doc in registry.documents())
        self._senders: dict[str, set[int]] = {}  # provider document -> owners that sent it
        self._sent: dict[int, set[str]] = {}  # owner -> provider documents it sent
        self._uses: dict[int, set[str]] = {}  # owner -> tools it registered
        self._cache: dict[str, ToolSchema] = {}
        self._streams: dict[str, StreamSchema] = {}

    @classmethod
    def load(cls, *, max_documents: int = MAX_DOCUMENTS_PER_PROVIDER) -> Catalog:
        registry, errors = Registry.from_search_path()
        for error in errors:
            # A broken lexicon only disables the tools that need it; the broker still starts.
            log.warning("lexicon skipped: %s", error)
        return cls(registry, max_documents=max_documents)

    def stage(self, docs: Any, *, owner: int) -> Staged:
        """The catalog as it would be with ``owner``'s documents added; nothing changes until
        :meth:`commit`. Raises InvalidParams for a bad or over-limit list, Conflict for a
        document whose NSID is taken by different content (installed, or another provider's).
        """
        if docs is None:
            docs = []
        if not isinstance(docs, list):
            raise InvalidParams("lexicons must be a list of lexicon documents")
        sent = self._sent.get(owner, set())
        if len(docs) > self.max_documents:
            self._too_many()
        parsed: dict[str, LexiconDoc] = {}
        for i, raw in enumerate(docs):
            doc, problems = lint_document(raw, f"lexicons[{i}]")
            if doc is None or problems:
                raise InvalidParams(
                    "; ".join(str(p) for p in problems) or f"lexicons[{i}] cannot be read",
                    data={"lexicon": _doc_id(raw)},
                )
            if parsed.get(doc.id, doc) != doc:
                raise InvalidParams(f"lexicon {doc.id} is sent twice with different content")
            if doc.id in self.registry and self.registry.document(doc.id) != doc:
                if doc.id in self._installed:
                    whose = "installed"
                elif owner in self._senders.get(doc.id, ()):
                    whose = "sent earlier on this connection, which holds it until it closes"
                else:
                    whose = "held by another provider or needed by a registered tool"
                raise Conflict(
                    f"lexicon {doc.id} is already registered with different content ({whose})",
                    data={"lexicon": doc.id},
                )
            parsed[doc.id] = doc
        owned = {n for n in parsed if n not in self._installed}
        if len(sent | owned) > self.max_documents:
            self._too_many()
        fresh = [d for d in parsed.values() if d.id not in self.registry]
        registry = self.registry
        if fresh:
            registry = Registry([*self.registry.documents(), *fresh])
            problems = registry.check([d.id for d in fresh])
            if problems:
                raise InvalidParams("; ".join(str(p) for p in problems))
        return Staged(self, self.registry, registry, owner, owned)

    def _too_many(self) -> NoReturn:
        raise InvalidParams(
            f"a provider may send at most {self.max_documents} lexicon documents",
            data={"limit": self.max_documents},
        )

    def commit(self, staged: Staged, tools: Iterable[str] = ()) -> None:
        """Make a staged registration the catalog's: its documents and the tools it registered
        (which keep the documents they need)."""
        # Staging and committing happen with no await in between: nothing else moved.
        assert staged.catalog is self, "staged by another catalog"
        assert staged.base is self.registry, "stale registration"
        if staged.registry is not self.registry:
            self.registry = staged.registry
            self._cache = staged.cache
            self._streams = {}
        for nsid in staged.owned:
            self._senders.setdefault(nsid, set()).add(staged.owner)
        if staged.owned:
            self._sent.setdefault(staged.owner, set()).update(staged.owned)
        uses = set(tools)
        if uses:
            self._uses.setdefault(staged.owner, set()).update(uses)

    def add_documents(self, docs: Iterable[Any], *, owner: int) -> None:
        """Add ``owner``'s documents at once (all or nothing)."""
        self.commit(self.stage(list(docs), owner=owner))

    def release_tools(self, owner: int, tools: Iterable[str]) -> None:
        """``owner`` no longer serves ``tools``: the documents only they needed may go."""
        uses = self._uses.get(owner)
        if uses is None:
            return
        uses.difference_update(tools)
        if not uses:
            del self._uses[owner]
        self._collect()

    def drop_owner(self, owner: int) -> None:
        """``owner`` (a provider connection) is gone: it no longer holds the documents it sent
        nor needs those of its tools. Documents that nobody holds or needs are dropped; an
        installed one never is."""
        sent = self._sent.pop(owner, set())
        for nsid in sent:
            senders = self._senders.get(nsid)
            if senders is not None:
                senders.discard(owner)
                if not senders:
                    del self._senders[nsid]
        if self._uses.pop(owner, None) is not None or sent:
            self._collect()

    def _collect(self) -> None:
        """Drop the provider documents no connected sender holds and no registered tool needs
        (through references, at any depth)."""
        provided = [d for d in self.registry.documents() if d.id not in self._installed]
        if not provided:
            return
        keep = self._needed({*self._senders, *(n for u in self._uses.values() for n in u)})
        gone = [d.id for d in provided if d.id not in keep]
        if not gone:
            return
        for nsid in gone:
            self._senders.pop(nsid, None)
        self.registry = Registry(
            d for d in self.registry.documents() if d.id in self._installed or d.id in keep
        )
        self._cache.clear()
        self._streams.clear()
        log.debug("dropped lexicons nobody holds or needs: %s", ", ".join(gone))

    def _needed(self, roots: Iterable[str]) -> set[str]:
        """The documents ``roots`` are or refer to, at any depth."""
        seen: set[str] = set()
        todo = [r for r in roots if r in self.registry]
        while todo:
            nsid = todo.pop()
            if nsid in seen:
                continue
            seen.add(nsid)
            for name, definition in self.registry.document(nsid).defs.items():
                for _, ref in iter_refs(definition, name):
                    target = split_ref(ref)[0]
                    if target and target not in seen and target in self.registry:
                        todo.append(target)
        return seen

    def tool(self, nsid: str) -> ToolSchema:
        found = self._cache.get(nsid)
        if found is None:
            found = self._cache[nsid] = _tool_schema(self.registry, nsid)
        return found

    def stream(self, nsid: str) -> StreamSchema:
        """The subscription lexicon ``nsid`` (InvalidParams when it is none)."""
        found = self._streams.get(nsid)
        if found is None:
            found = self._streams[nsid] = _stream_schema(self.registry, nsid)
        return found


@dataclass(eq=False)
class Staged:
    """A registration's documents, read and checked but not yet the catalog's."""

    catalog: Catalog
    base: Registry  # the catalog's registry when this was staged
    registry: Registry  # ``base`` with the new documents (``base`` itself when none is new)
    owner: int
    owned: set[str]  # provider documents (not installed ones) the registration sends
    cache: dict[str, ToolSchema] = field(default_factory=dict)

    def tool(self, nsid: str) -> ToolSchema:
        if self.registry is self.base:
            return self.catalog.tool(nsid)
        found = self.cache.get(nsid)
        if found is None:
            found = self.cache[nsid] = _tool_schema(self.registry, nsid)
        return found

    def stream(self, nsid: str) -> StreamSchema:
        if self.registry is self.base:
            return self.catalog.stream(nsid)
        return _stream_schema(self.registry, nsid)


def _stream_schema(registry: Registry, nsid: str) -> StreamSchema:
    try:
        _, main = registry.resolve(nsid)
    except LexiconError as exc:
        raise InvalidParams(
            f"{nsid}: no published lexicon ({exc.rule})", data={"nsid": nsid}
        ) from None
    if not isinstance(main, SubscriptionType):
        raise InvalidParams(
            f"{nsid}: its lexicon is not a subscription, so it is not an event stream",
            data={"nsid": nsid},
        )
    doc = registry.document(nsid)
    return StreamSchema(nsid, main.description or doc.description or nsid, registry)


def _tool_schema(registry: Registry, nsid: str) -> ToolSchema:
    try:
        _, main = registry.resolve(nsid)
    except LexiconError as exc:
        raise InvalidParams(
            f"{nsid}: no published lexicon ({exc.rule})", data={"nsid": nsid}
        ) from None
    if not isinstance(main, QueryType | ProcedureType):
        raise InvalidParams(f"{nsid}: its lexicon is not a query or procedure, so it is not a tool")
    doc = registry.document(nsid)
    # One converter per schema: each carries only the $defs it refers to (at any depth).
    converter = _JsonSchema(registry, nsid)
    if isinstance(main, QueryType):
        input_schema = converter.finish(converter.params(main.parameters))
    else:
        input_schema = converter.finish(converter.body(main.input))
    output_schema = None
    if main.output:
        converter = _JsonSchema(registry, nsid)
        output_schema = converter.finish(converter.body(main.output))
    return ToolSchema(
        nsid=nsid,
        kind="query" if isinstance(main, QueryType) else "procedure",
        description=main.description or doc.description or nsid,
        input_schema=input_schema,
        output_schema=output_schema,
        destructive=isinstance(main, ProcedureType)
        and isinstance(doc.defs.get("destructive"), TokenType),
        registry=registry,
        has_output=main.output is not None and main.output.schema is not None,
    )


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
                    # JSON Schema has no graphemes: carried as annotations, checked by the broker
                    min_graphemes="x-lexicon-minGraphemes",
                    max_graphemes="x-lexicon-maxGraphemes",
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
