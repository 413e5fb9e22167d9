"""The Lexicon type system as frozen dataclasses: what a parsed document is made of.

Nodes are built only by :mod:`libkiki.lexicon.loader`, which checks every rule, so code that walks
them (validator, code generator, compatibility checker) can trust their shape. ``ref`` targets are
stored canonical: ``nsid`` for a ``main`` definition, ``nsid#name`` otherwise -- the same spelling
a ``$type`` field carries, so union members match by plain string comparison.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

__all__ = [
    "ArrayType",
    "BlobType",
    "Body",
    "BooleanType",
    "BytesType",
    "CidLinkType",
    "Def",
    "FieldType",
    "IntegerType",
    "LexiconDoc",
    "NullType",
    "ObjectType",
    "ParamsType",
    "PermissionSetType",
    "ProcedureType",
    "QueryType",
    "RecordType",
    "RefType",
    "StringType",
    "SubscriptionType",
    "TokenType",
    "UnionType",
    "UnknownType",
    "XrpcError",
    "canonical_ref",
    "split_ref",
]


def split_ref(ref: str) -> tuple[str, str]:
    """``(nsid, name)`` of a canonical or absolute ref; ``main`` when there is no fragment."""
    nsid, _, name = ref.partition("#")
    return nsid, name or "main"


def canonical_ref(nsid: str, name: str) -> str:
    return nsid if name == "main" else f"{nsid}#{name}"


@dataclass(frozen=True, slots=True)
class NullType:
    description: str | None = None


@dataclass(frozen=True, slots=True)
class BooleanType:
    description: str | None = None
    default: bool | None = None
    const: bool | None = None


@dataclass(frozen=True, slots=True)
class IntegerType:
    description: str | None = None
    minimum: int | None = None
    maximum: int | None = None
    enum: tuple[int, ...] | None = None
    default: int | None = None
    const: int | None = None


@dataclass(frozen=True, slots=True)
class StringType:
    description: str | None = None
    format: str | None = None
    min_length: int | None = None
    max_length: int | None = None
    min_graphemes: int | None = None
    max_graphemes: int | None = None
    known_values: tuple[str, ...] | None = None
    enum: tuple[str, ...] | None = None
    default: str | None = None
    const: str | None = None


@dataclass(frozen=True, slots=True)
class BytesType:
    description: str | None = None
    min_length: int | None = None
    max_length: int | None = None


@dataclass(frozen=True, slots=True)
class CidLinkType:
    description: str | None = None


@dataclass(frozen=True, slots=True)
class BlobType:
    description: str | None = None
    accept: tuple[str, ...] | None = None
    max_size: int | None = None


@dataclass(frozen=True, slots=True)
class UnknownType:
    description: str | None = None


@dataclass(frozen=True, slots=True)
class TokenType:
    description: str | None = None


@dataclass(frozen=True, slots=True)
class RefType:
    ref: str  # canonical
    description: str | None = None


@dataclass(frozen=True, slots=True)
class UnionType:
    refs: tuple[str, ...]  # canonical
    closed: bool = False
    description: str | None = None


@dataclass(frozen=True, slots=True)
class ArrayType:
    items: FieldType
    min_length: int | None = None
    max_length: int | None = None
    description: str | None = None


@dataclass(frozen=True, slots=True)
class ObjectType:
    properties: Mapping[str, FieldType] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    nullable: tuple[str, ...] = ()
    description: str | None = None


@dataclass(frozen=True, slots=True)
class ParamsType:
    properties: Mapping[str, FieldType] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    description: str | None = None


@dataclass(frozen=True, slots=True)
class Body:
    """An XRPC input, output or subscription message."""

    encoding: str
    schema: ObjectType | RefType | UnionType | None = None
    description: str | None = None


@dataclass(frozen=True, slots=True)
class XrpcError:
    name: str
    description: str | None = None


@dataclass(frozen=True, slots=True)
class RecordType:
    key: str
    record: ObjectType
    description: str | None = None


@dataclass(frozen=True, slots=True)
class QueryType:
    parameters: ParamsType | None = None
    output: Body | None = None
    errors: tuple[XrpcError, ...] = ()
    description: str | None = None


@dataclass(frozen=True, slots=True)
class ProcedureType:
    parameters: ParamsType | None = None
    input: Body | None = None
    output: Body | None = None
    errors: tuple[XrpcError, ...] = ()
    description: str | None = None


@dataclass(frozen=True, slots=True)
class SubscriptionType:
    parameters: ParamsType | None = None
    message: Body | None = None
    errors: tuple[XrpcError, ...] = ()
    description: str | None = None


@dataclass(frozen=True, slots=True)
class PermissionSetType:
    permissions: tuple[Mapping[str, Any], ...]
    title: str | None = None
    detail: str | None = None
    description: str | None = None


FieldType: TypeAlias = (
    NullType
    | BooleanType
    | IntegerType
    | StringType
    | BytesType
    | CidLinkType
    | BlobType
    | UnknownType
    | RefType
    | UnionType
    | ArrayType
    | ObjectType
)

Def: TypeAlias = (
    FieldType
    | TokenType
    | ParamsType
    | RecordType
    | QueryType
    | ProcedureType
    | SubscriptionType
    | PermissionSetType
)

PRIMARY = (RecordType, QueryType, ProcedureType, SubscriptionType, PermissionSetType)


@dataclass(frozen=True, slots=True)
class LexiconDoc:
    id: str
    defs: Mapping[str, Def]
    description: str | None = None
    revision: int | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    source: str | None = field(default=None, compare=False)

    def refs(self) -> dict[str, Def]:
        """Every definition by its canonical ref."""
        return {canonical_ref(self.id, name): d for name, d in self.defs.items()}
