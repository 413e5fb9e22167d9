"""Is a new version of a lexicon compatible with the old one? The Lexicon evolution rules.

Data valid under the old version must stay valid under the new one, and the meaning of a field
must not change: new fields are optional; nothing is removed or renamed; no type changes; no
constraint is tightened; a closed union stays closed and keeps its members. Each break is
reported with the JSON path of the schema node that broke, e.g.
``defs.main.input.schema.properties.title.maxGraphemes: tightened from 300 to 256``.

Some rules depend on who reads the data. A required property that becomes optional breaks
whoever *receives* it (a query's or a procedure's output, a subscription's message, a record,
anything an error or another document may carry), as readers rely on it being there; in what
only the lexicon's own server reads (a query's or a procedure's parameters and input) it is
compatible, as callers that send it keep being valid. A named definition counts as received
unless the documents compared reach it from parameters and inputs alone (through refs and
unions, across the documents of :func:`compare_sets`): one nothing refers to may be used by
documents not in view, so it counts as received.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from libkiki.lexicon.model import (
    ArrayType,
    BlobType,
    Body,
    BooleanType,
    BytesType,
    Def,
    IntegerType,
    LexiconDoc,
    ObjectType,
    ParamsType,
    ProcedureType,
    QueryType,
    RecordType,
    RefType,
    StringType,
    SubscriptionType,
    UnionType,
    canonical_ref,
)

__all__ = ["BreakingChange", "compare", "compare_sets"]

_TYPE_NAMES = {
    "NullType": "null",
    "BooleanType": "boolean",
    "IntegerType": "integer",
    "StringType": "string",
    "BytesType": "bytes",
    "CidLinkType": "cid-link",
    "BlobType": "blob",
    "UnknownType": "unknown",
    "RefType": "ref",
    "UnionType": "union",
    "ArrayType": "array",
    "ObjectType": "object",
    "ParamsType": "params",
    "TokenType": "token",
    "RecordType": "record",
    "QueryType": "query",
    "ProcedureType": "procedure",
    "SubscriptionType": "subscription",
    "PermissionSetType": "permission-set",
}


@dataclass(frozen=True, slots=True)
class BreakingChange:
    document: str
    path: str
    rule: str

    def __str__(self) -> str:
        return (
            f"{self.document}:{self.path}: {self.rule}"
            if self.path
            else f"{self.document}: {self.rule}"
        )

    def as_dict(self) -> dict[str, str]:
        return {"document": self.document, "path": self.path, "rule": self.rule}


def _kind(node: object) -> str:
    return _TYPE_NAMES.get(type(node).__name__, type(node).__name__)


def _refs(node: object) -> Iterator[str]:
    """The canonical refs a schema node names, at any depth short of another definition."""
    if isinstance(node, RefType):
        yield node.ref
    elif isinstance(node, UnionType):
        yield from node.refs
    elif isinstance(node, ArrayType):
        yield from _refs(node.items)
    elif isinstance(node, ObjectType | ParamsType):
        for prop in node.properties.values():
            yield from _refs(prop)
    elif isinstance(node, Body):
        yield from _refs(node.schema)
    elif isinstance(node, RecordType):
        yield from _refs(node.record)


def _written_only(docs: Iterable[LexiconDoc]) -> frozenset[str]:
    """The definitions (canonical refs) that ``docs`` reach from parameters and inputs alone:
    only the lexicon's server reads them. Everything else may be received by readers."""
    defs: dict[str, Def] = {}
    for doc in docs:
        defs.update(doc.refs())
    written: list[str] = []
    received: list[str] = []
    for ref, node in defs.items():
        if isinstance(node, QueryType | ProcedureType | SubscriptionType):
            written.extend(_refs(node.parameters))
            written.extend(_refs(getattr(node, "input", None)))
            received.extend(_refs(getattr(node, "output", None)))
            received.extend(_refs(getattr(node, "message", None)))
        elif isinstance(node, RecordType):
            received.append(ref)  # stored, and read by whoever reads the store
    reached = {"written": _closure(written, defs), "received": _closure(received, defs)}
    return frozenset(reached["written"] - reached["received"])


def _closure(start: Iterable[str], defs: Mapping[str, Def]) -> set[str]:
    seen: set[str] = set()
    todo = list(start)
    while todo:
        ref = todo.pop()
        if ref in seen:
            continue
        seen.add(ref)
        node = defs.get(ref)
        if node is not None and not isinstance(node, QueryType | ProcedureType | SubscriptionType):
            todo.extend(_refs(node))
    return seen


class _Diff:
    def __init__(self, document: str) -> None:
        self.document = document
        self.found: list[BreakingChange] = []
        # Whether the node being compared is received by readers (see the module docstring).
        self.received = True

    def add(self, path: str, rule: str) -> None:
        self.found.append(BreakingChange(self.document, path, rule))

    def upper(self, path: str, key: str, old: int | None, new: int | None) -> None:
        """A maximum: adding one or lowering it breaks old data."""
        if new is not None and (old is None or new < old):
            was = "unbounded" if old is None else str(old)
            self.add(f"{path}.{key}", f"tightened from {was} to {new}")

    def lower(self, path: str, key: str, old: int | None, new: int | None) -> None:
        if new is not None and (old is None or new > old):
            was = "unbounded" if old is None else str(old)
            self.add(f"{path}.{key}", f"tightened from {was} to {new}")

    def same(self, path: str, key: str, old: Any, new: Any) -> None:
        if new is not None and new != old:
            self.add(f"{path}.{key}", f"changed from {old!r} to {new!r}")

    def choices(self, path: str, old: tuple[Any, ...] | None, new: tuple[Any, ...] | None) -> None:
        if new is None:
            return
        if old is None:
            self.add(f"{path}.enum", "added: values outside it were valid before")
        elif lost := [v for v in old if v not in new]:
            self.add(f"{path}.enum", f"removed {', '.join(map(repr, lost))}")

    def node(self, path: str, old: Def | Body, new: Def | Body) -> None:
        if type(old) is not type(new):
            self.add(path, f"type changed from {_kind(old)} to {_kind(new)}")
            return
        method = getattr(self, "n_" + type(old).__name__, None)
        if method is not None:
            method(path, old, new)

    def n_BooleanType(self, path: str, old: BooleanType, new: BooleanType) -> None:
        self.same(path, "const", old.const, new.const)

    def n_IntegerType(self, path: str, old: IntegerType, new: IntegerType) -> None:
        self.lower(path, "minimum", old.minimum, new.minimum)
        self.upper(path, "maximum", old.maximum, new.maximum)
        self.choices(path, old.enum, new.enum)
        self.same(path, "const", old.const, new.const)

    def n_StringType(self, path: str, old: StringType, new: StringType) -> None:
        self.same(path, "format", old.format, new.format)
        self.lower(path, "minLength", old.min_length, new.min_length)
        self.upper(path, "maxLength", old.max_length, new.max_length)
        self.lower(path, "minGraphemes", old.min_graphemes, new.min_graphemes)
        self.upper(path, "maxGraphemes", old.max_graphemes, new.max_graphemes)
        self.choices(path, old.enum, new.enum)
        self.same(path, "const", old.const, new.const)

    def n_BytesType(self, path: str, old: BytesType, new: BytesType) -> None:
        self.lower(path, "minLength", old.min_length, new.min_length)
        self.upper(path, "maxLength", old.max_length, new.max_length)

    def n_BlobType(self, path: str, old: BlobType, new: BlobType) -> None:
        self.upper(path, "maxSize", old.max_size, new.max_size)
        if new.accept is not None and "*/*" not in new.accept:
            lost = [a for a in (old.accept or ("*/*",)) if a not in new.accept]
            if lost:
                self.add(f"{path}.accept", f"no longer accepts {', '.join(lost)}")

    def n_ArrayType(self, path: str, old: ArrayType, new: ArrayType) -> None:
        self.lower(path, "minLength", old.min_length, new.min_length)
        self.upper(path, "maxLength", old.max_length, new.max_length)
        self.node(f"{path}.items", old.items, new.items)

    def n_RefType(self, path: str, old: RefType, new: RefType) -> None:
        if old.ref != new.ref:
            self.add(f"{path}.ref", f"changed from {old.ref} to {new.ref}")

    def n_UnionType(self, path: str, old: UnionType, new: UnionType) -> None:
        if old.closed and not new.closed:
            self.add(f"{path}.closed", "a closed union must stay closed")
        elif new.closed and not old.closed:
            self.add(f"{path}.closed", "an open union cannot be closed")
        if old.closed and new.closed:
            lost = [r for r in old.refs if r not in new.refs]
            added = [r for r in new.refs if r not in old.refs]
            if lost:
                self.add(f"{path}.refs", f"removed {', '.join(lost)} from a closed union")
            if added:
                self.add(f"{path}.refs", f"added {', '.join(added)} to a closed union")
        elif lost := [r for r in old.refs if r not in new.refs]:
            self.add(f"{path}.refs", f"removed {', '.join(lost)}")

    def properties(
        self,
        path: str,
        old: Mapping[str, Any],
        new: Mapping[str, Any],
        old_required: tuple[str, ...],
        new_required: tuple[str, ...],
        received: bool,
    ) -> None:
        for name, prop in old.items():
            where = f"{path}.properties.{name}"
            if name not in new:
                self.add(where, "removed (or renamed)")
                continue
            self.node(where, prop, new[name])
            if received and name in old_required and name not in new_required:
                self.add(where, "became optional: readers rely on it being there")
        for name in new_required:
            if name not in old_required:
                fresh = name not in old
                what = "a new field must be optional" if fresh else "became required"
                self.add(f"{path}.properties.{name}", what)

    def n_ObjectType(self, path: str, old: ObjectType, new: ObjectType) -> None:
        self.properties(
            path, old.properties, new.properties, old.required, new.required, self.received
        )
        for name in old.nullable:
            if name not in new.nullable and name in new.properties:
                self.add(f"{path}.properties.{name}", "is no longer nullable")

    def n_ParamsType(self, path: str, old: ParamsType, new: ParamsType) -> None:
        # Parameters are only ever sent to the lexicon's server.
        self.properties(path, old.properties, new.properties, old.required, new.required, False)

    def n_RecordType(self, path: str, old: RecordType, new: RecordType) -> None:
        self.same(path, "key", old.key, new.key)
        self.node(f"{path}.record", old.record, new.record)

    def optional(self, path: str, old: Any, new: Any, what: str) -> None:
        if old is not None and new is None:
            self.add(path, f"{what} removed")
        elif old is None and new is not None and what != "output":
            self.compare_fresh(path, new, what)
        elif old is not None and new is not None:
            self.node(path, old, new)

    def compare_fresh(self, path: str, new: Any, what: str) -> None:
        required = getattr(getattr(new, "schema", new), "required", ())
        if required:
            self.add(path, f"{what} added with required fields {', '.join(required)}")

    def n_Body(self, path: str, old: Body, new: Body) -> None:
        self.same(path, "encoding", old.encoding, new.encoding)
        self.optional(f"{path}.schema", old.schema, new.schema, "schema")

    def xrpc(
        self,
        path: str,
        old: QueryType | ProcedureType | SubscriptionType,
        new: QueryType | ProcedureType | SubscriptionType,
    ) -> None:
        self.optional(f"{path}.parameters", old.parameters, new.parameters, "parameters")
        for part in ("input", "output", "message"):
            outer, self.received = self.received, part != "input"
            try:
                self.optional(
                    f"{path}.{part}", getattr(old, part, None), getattr(new, part, None), part
                )
            finally:
                self.received = outer

    n_QueryType = xrpc
    n_ProcedureType = xrpc
    n_SubscriptionType = xrpc


def compare(
    old: LexiconDoc, new: LexiconDoc, *, written_only: frozenset[str] | None = None
) -> list[BreakingChange]:
    """Every breaking change from ``old`` to ``new`` (two versions of one NSID).

    ``written_only``: the definitions only the lexicon's server reads (canonical refs); by
    default those the two versions reach from parameters and inputs alone.
    """
    diff = _Diff(new.id)
    if old.id != new.id:
        diff.add("id", f"changed from {old.id} to {new.id}")
        return diff.found
    if written_only is None:
        written_only = _written_only((old,)) & _written_only((new,))
    for name, definition in old.defs.items():
        path = f"defs.{name}"
        if name not in new.defs:
            diff.add(path, "removed (or renamed)")
        else:
            diff.received = canonical_ref(new.id, name) not in written_only
            diff.node(path, definition, new.defs[name])
    return diff.found


def compare_sets(
    old: Mapping[str, LexiconDoc], new: Mapping[str, LexiconDoc]
) -> list[BreakingChange]:
    """Compare two sets of documents by NSID: a document that disappeared is a break too.

    A definition counts as only written when both sets reach it from parameters and inputs
    alone (refs between the documents of a set included)."""
    written_only = _written_only(old.values()) & _written_only(new.values())
    found: list[BreakingChange] = []
    for nsid in sorted(old):
        if nsid not in new:
            found.append(BreakingChange(nsid, "", "document removed"))
        else:
            found.extend(compare(old[nsid], new[nsid], written_only=written_only))
    return found
