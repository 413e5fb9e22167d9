"""Parse Lexicon v1 documents from JSON values, checking every rule of the schema language.

Sans-I/O: :func:`parse_document` takes the decoded JSON value; reading files is the registry's
job. The parser collects every problem it finds (``lint_document``) rather than stopping at the
first, because a person fixing a document wants the whole list; ``parse_document`` raises the
first one as a :class:`~libkiki.errors.LexiconError` naming the document, the JSON path and the
rule.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

from libkiki.errors import LexiconError
from libkiki.lexicon import formats
from libkiki.lexicon.model import (
    PRIMARY,
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
    PermissionSetType,
    ProcedureType,
    QueryType,
    RecordType,
    RefType,
    StringType,
    SubscriptionType,
    TokenType,
    UnionType,
    UnknownType,
    XrpcError,
)
from libkiki.lexicon.reader import DEF_NAME, Path, Reader, is_int

__all__ = ["lint_document", "parse_document"]

_KEY: Final = re.compile(r"tid|nsid|any|literal:[a-zA-Z0-9_~.:-]{1,512}")
_MIME: Final = re.compile(r"[a-z*][a-z0-9.+*-]*/[a-zA-Z0-9*][a-zA-Z0-9.+*-]*")

FIELD_TYPES: Final = frozenset(
    {"null", "boolean", "integer", "string", "bytes", "cid-link", "blob", "unknown", "ref"}
    | {"union", "array", "object"}
)
# Named definitions: a ref, union or unknown is only ever a field's type (interop vectors).
NAMED_TYPES: Final = (FIELD_TYPES - {"ref", "union", "unknown", "null"}) | {"token"}
PRIMARY_TYPES: Final = frozenset({"record", "query", "procedure", "subscription", "permission-set"})
PARAM_TYPES: Final = frozenset({"boolean", "integer", "string", "unknown", "array"})
PARAM_ITEM_TYPES: Final = frozenset({"boolean", "integer", "string", "unknown"})
BODY_TYPES: Final = frozenset({"object", "ref", "union"})
# Steps of a JSON path from the document's root to a schema node, at most. Published lexicons
# nest 9 deep; the parser, the validator and the code generator recurse once per level, and a
# document nested hundreds deep would end them in a RecursionError instead of a lint problem.
MAX_PATH: Final = 64

_T = TypeVar("_T")


class _Parser(Reader):
    # -- nodes -------------------------------------------------------------------------------

    def typed(self, node: Any, path: Path, allowed: frozenset[str]) -> Def | None:
        if len(path) > MAX_PATH:
            self.fail(path[:MAX_PATH], f"is nested too deeply (more than {MAX_PATH} steps)")
            return None
        if not isinstance(node, dict):
            self.fail(path, "must be an object")
            return None
        kind = node.get("type")
        if not isinstance(kind, str):
            self.fail((*path, "type"), "is required and must be a string")
            return None
        if kind not in allowed:
            known = kind in FIELD_TYPES | PRIMARY_TYPES | {"token", "params"}
            why = "is not allowed here" if known else "is not a Lexicon type"
            self.fail((*path, "type"), f"{kind!r} {why} (expected {' or '.join(sorted(allowed))})")
            return None
        desc = self.string(node, "description", path)
        build = getattr(self, "t_" + kind.replace("-", "_"))
        result: Def = build(node, path, desc)
        return result

    def field(self, node: Any, path: Path) -> FieldType:
        parsed = self.typed(node, path, FIELD_TYPES)
        return parsed if isinstance(parsed, _FIELD_CLASSES) else UnknownType()

    def t_null(self, node: Mapping[str, Any], path: Path, desc: str | None) -> NullType:
        return NullType(desc)

    def t_unknown(self, node: Mapping[str, Any], path: Path, desc: str | None) -> UnknownType:
        return UnknownType(desc)

    def t_token(self, node: Mapping[str, Any], path: Path, desc: str | None) -> TokenType:
        return TokenType(desc)

    def t_cid_link(self, node: Mapping[str, Any], path: Path, desc: str | None) -> CidLinkType:
        return CidLinkType(desc)

    def t_boolean(self, node: Mapping[str, Any], path: Path, desc: str | None) -> BooleanType:
        default, const = self.boolean(node, "default", path), self.boolean(node, "const", path)
        if default is not None and const is not None and default != const:
            self.fail((*path, "default"), "must equal const")
        return BooleanType(desc, default, const)

    def t_integer(self, node: Mapping[str, Any], path: Path, desc: str | None) -> IntegerType:
        t = IntegerType(
            desc,
            self.integer(node, "minimum", path),
            self.integer(node, "maximum", path),
            self.items(node, "enum", path, is_int, "integers"),
            self.integer(node, "default", path),
            self.integer(node, "const", path),
        )
        self.bounds(path, t.minimum, t.maximum, "minimum/maximum")
        for key in ("default", "const"):
            value = getattr(t, key)
            if value is None:
                continue
            if (t.minimum is not None and value < t.minimum) or (
                t.maximum is not None and value > t.maximum
            ):
                self.fail((*path, key), "must lie between minimum and maximum")
            if t.enum is not None and value not in t.enum:
                self.fail((*path, key), "must be one of enum")
        return t

    def t_string(self, node: Mapping[str, Any], path: Path, desc: str | None) -> StringType:
        fmt = self.string(node, "format", path)
        if fmt is not None and fmt not in formats.FORMATS:
            self.fail((*path, "format"), f"{fmt!r} is not a Lexicon string format")
            fmt = None
        t = StringType(
            desc,
            fmt,
            self.size(node, "minLength", path),
            self.size(node, "maxLength", path),
            self.size(node, "minGraphemes", path),
            self.size(node, "maxGraphemes", path),
            self.strings(node, "knownValues", path),
            self.strings(node, "enum", path),
            self.string(node, "default", path),
            self.string(node, "const", path),
        )
        self.bounds(path, t.min_length, t.max_length, "minLength/maxLength")
        self.bounds(path, t.min_graphemes, t.max_graphemes, "minGraphemes/maxGraphemes")
        for key in ("default", "const"):
            value = getattr(t, key)
            if value is not None and t.enum is not None and value not in t.enum:
                self.fail((*path, key), "must be one of enum")
        return t

    def t_bytes(self, node: Mapping[str, Any], path: Path, desc: str | None) -> BytesType:
        t = BytesType(desc, self.size(node, "minLength", path), self.size(node, "maxLength", path))
        self.bounds(path, t.min_length, t.max_length, "minLength/maxLength")
        return t

    def t_blob(self, node: Mapping[str, Any], path: Path, desc: str | None) -> BlobType:
        accept = self.items(
            node, "accept", path, lambda v: isinstance(v, str) and bool(_MIME.fullmatch(v)), "MIME"
        )
        return BlobType(desc, accept, self.size(node, "maxSize", path))

    def t_ref(self, node: Mapping[str, Any], path: Path, desc: str | None) -> RefType:
        if "ref" not in node:
            self.fail((*path, "ref"), "is required")
        return RefType(self.ref(node.get("ref"), (*path, "ref")) or "", desc)

    def t_union(self, node: Mapping[str, Any], path: Path, desc: str | None) -> UnionType:
        raw = node.get("refs")
        refs: list[str] = []
        if not isinstance(raw, list):
            self.fail((*path, "refs"), "is required and must be an array of references")
        else:
            for i, item in enumerate(raw):
                ref = self.ref(item, (*path, "refs", f"[{i}]"))
                if ref is not None:
                    refs.append(ref)
        closed = bool(self.boolean(node, "closed", path))
        if closed and not refs:
            self.fail((*path, "refs"), "a closed union must list at least one reference")
        return UnionType(tuple(refs), closed, desc)

    def t_array(self, node: Mapping[str, Any], path: Path, desc: str | None) -> ArrayType:
        if "items" not in node:
            self.fail((*path, "items"), "is required")
        items = self.field(node.get("items", {"type": "unknown"}), (*path, "items"))
        t = ArrayType(
            items, self.size(node, "minLength", path), self.size(node, "maxLength", path), desc
        )
        self.bounds(path, t.min_length, t.max_length, "minLength/maxLength")
        return t

    def properties(
        self, node: Mapping[str, Any], path: Path, parse: Callable[[Any, Path], _T]
    ) -> dict[str, _T]:
        raw = node.get("properties", {})
        if not isinstance(raw, dict):
            self.fail((*path, "properties"), "must be an object")
            return {}
        for name in raw:
            if name.startswith("$"):
                # The data model's own ($type, $bytes, $link); a property so named would be
                # taken for one of them (a null "$type" beside the object's own).
                self.fail((*path, "properties", name), "names starting with $ are reserved")
        return {
            name: parse(value, (*path, "properties", name))
            for name, value in raw.items()
            if not name.startswith("$")
        }

    def names(
        self, node: Mapping[str, Any], key: str, path: Path, props: Mapping[str, Any]
    ) -> tuple[str, ...]:
        names = self.strings(node, key, path) or ()
        for i, name in enumerate(names):
            if name not in props:
                self.fail((*path, key, f"[{i}]"), f"{name!r} is not a defined property")
        return names

    def t_object(self, node: Mapping[str, Any], path: Path, desc: str | None) -> ObjectType:
        props = self.properties(node, path, self.field)
        return ObjectType(
            props,
            self.names(node, "required", path, props),
            self.names(node, "nullable", path, props),
            desc,
        )

    def param(self, node: Any, path: Path) -> FieldType:
        parsed = self.typed(node, path, PARAM_TYPES)
        if isinstance(parsed, ArrayType) and isinstance(parsed.items, _NON_PARAM_ITEMS):
            self.fail((*path, "items", "type"), "a parameter array holds only primitive values")
        return parsed if isinstance(parsed, _FIELD_CLASSES) else UnknownType()

    def t_params(self, node: Mapping[str, Any], path: Path, desc: str | None) -> ParamsType:
        props = self.properties(node, path, self.param)
        return ParamsType(props, self.names(node, "required", path, props), desc)

    def parameters(self, node: Mapping[str, Any], path: Path) -> ParamsType | None:
        if "parameters" not in node:
            return None
        parsed = self.typed(node["parameters"], (*path, "parameters"), frozenset({"params"}))
        return parsed if isinstance(parsed, ParamsType) else None

    def body(self, node: Mapping[str, Any], key: str, path: Path) -> Body | None:
        raw = node.get(key)
        if raw is None:
            return None
        path = (*path, key)
        if not isinstance(raw, dict):
            self.fail(path, "must be an object")
            return None
        encoding = self.string(raw, "encoding", path)
        if encoding is None and key != "message":
            self.fail((*path, "encoding"), "is required")
        schema = None
        if "schema" in raw:
            parsed = self.typed(raw["schema"], (*path, "schema"), BODY_TYPES)
            if isinstance(parsed, ObjectType | RefType | UnionType):
                schema = parsed
        return Body(encoding or "application/json", schema, self.string(raw, "description", path))

    def errors_of(self, node: Mapping[str, Any], path: Path) -> tuple[XrpcError, ...]:
        raw = node.get("errors", [])
        ok = isinstance(raw, list) and all(
            isinstance(e, dict) and isinstance(e.get("name"), str) for e in raw
        )
        if not ok:
            self.fail((*path, "errors"), "must be an array of objects with a string name")
            return ()
        return tuple(XrpcError(e["name"], e.get("description")) for e in raw)

    def t_record(self, node: Mapping[str, Any], path: Path, desc: str | None) -> RecordType:
        key = self.string(node, "key", path)
        if key is None or not _KEY.fullmatch(key):
            self.fail((*path, "key"), "must be tid, nsid, any or literal:<record-key>")
        record = self.typed(node.get("record"), (*path, "record"), frozenset({"object"}))
        return RecordType(
            key or "any", record if isinstance(record, ObjectType) else ObjectType(), desc
        )

    def t_query(self, node: Mapping[str, Any], path: Path, desc: str | None) -> QueryType:
        return QueryType(
            self.parameters(node, path),
            self.body(node, "output", path),
            self.errors_of(node, path),
            desc,
        )

    def t_procedure(self, node: Mapping[str, Any], path: Path, desc: str | None) -> ProcedureType:
        return ProcedureType(
            self.parameters(node, path),
            self.body(node, "input", path),
            self.body(node, "output", path),
            self.errors_of(node, path),
            desc,
        )

    def t_subscription(
        self, node: Mapping[str, Any], path: Path, desc: str | None
    ) -> SubscriptionType:
        return SubscriptionType(
            self.parameters(node, path),
            self.body(node, "message", path),
            self.errors_of(node, path),
            desc,
        )

    def t_permission_set(
        self, node: Mapping[str, Any], path: Path, desc: str | None
    ) -> PermissionSetType:
        raw = node.get("permissions")
        perms: list[Mapping[str, Any]] = []
        if not isinstance(raw, list):
            self.fail((*path, "permissions"), "is required and must be an array")
            raw = []
        for i, perm in enumerate(raw):
            where = (*path, "permissions", f"[{i}]")
            if not isinstance(perm, dict) or perm.get("type") != "permission":
                self.fail(where, 'must be an object with type "permission"')
            elif not isinstance(perm.get("resource"), str):
                self.fail((*where, "resource"), "is required and must be a string")
            else:
                perms.append(perm)
        return PermissionSetType(
            tuple(perms), self.string(node, "title", path), self.string(node, "detail", path), desc
        )

    # -- the document ------------------------------------------------------------------------

    def parse(self, raw: Any) -> LexiconDoc | None:
        if not isinstance(raw, dict):
            self.fail((), "a Lexicon document must be a JSON object")
            return None
        if raw.get("lexicon") != 1 or isinstance(raw.get("lexicon"), bool):
            self.fail(("lexicon",), "must be 1 (Lexicon language version)")
        nsid = raw.get("id")
        if not isinstance(nsid, str) or not formats.is_nsid(nsid):
            self.fail(("id",), "must be a valid NSID")
            return None
        self.nsid = self.document = nsid
        revision = self.integer(raw, "revision", ())
        description = self.string(raw, "description", ())
        raw_defs = raw.get("defs")
        if not isinstance(raw_defs, dict):
            self.fail(("defs",), "is required and must be an object")
            return None
        defs: dict[str, Def] = {}
        for name, node in raw_defs.items():
            path = ("defs", name)
            if not DEF_NAME.fullmatch(name):
                self.fail(path, "is not a valid definition name")
                continue
            kind = node.get("type") if isinstance(node, dict) else None
            if name != "main" and isinstance(kind, str) and kind in PRIMARY_TYPES:
                self.fail((*path, "type"), "a primary type must be the main definition")
                continue
            allowed = NAMED_TYPES | PRIMARY_TYPES if name == "main" else NAMED_TYPES
            parsed = self.typed(node, path, allowed)
            if parsed is not None:
                defs[name] = parsed
        return LexiconDoc(nsid, defs, description, revision, raw)


_FIELD_CLASSES: Final = (
    NullType,
    BooleanType,
    IntegerType,
    StringType,
    BytesType,
    CidLinkType,
    BlobType,
    UnknownType,
    RefType,
    UnionType,
    ArrayType,
    ObjectType,
)
_NON_PARAM_ITEMS: Final = (
    NullType,
    BytesType,
    CidLinkType,
    BlobType,
    RefType,
    UnionType,
    ArrayType,
    ObjectType,
)
assert not set(PRIMARY) & set(_FIELD_CLASSES)


def lint_document(
    raw: Any, source: str | None = None
) -> tuple[LexiconDoc | None, list[LexiconError]]:
    """Parse ``raw`` and return the document (``None`` when unusable) with every problem found.

    ``source`` names the document in errors until its ``id`` is known (a file path, say).
    """
    parser = _Parser(source or "<document>")
    doc = parser.parse(raw)
    if doc is not None and source is not None:
        doc = LexiconDoc(doc.id, doc.defs, doc.description, doc.revision, doc.raw, source)
    return doc, parser.errors


def parse_document(raw: Any, source: str | None = None) -> LexiconDoc:
    """Parse one document; raise the first problem as a :class:`LexiconError`."""
    doc, errors = lint_document(raw, source)
    if errors:
        raise errors[0]
    assert doc is not None
    return doc
