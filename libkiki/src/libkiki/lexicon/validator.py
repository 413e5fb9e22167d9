"""Validate data against Lexicon definitions, fast.

Every definition is compiled once into a tree of small closures, one per schema node, each
specialised for the constraints that node actually has; validating a value is then plain calls
with no look-ups in the schema. An object's check is generated as one function, which calls a
property's check only when a cheaper test does not already show that it passes. A failure
raises a private exception that each enclosing check extends with its key on the way out
(free on the success path: CPython 3.11 try blocks cost nothing until they catch), and the
public entry points turn it into a :class:`~libkiki.errors.ValidationError` such as
``input.track.title: must be at most 256 graphemes``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from libkiki.errors import LexiconError, ValidationError
from libkiki.lexicon.checks import (
    Check,
    Invalid,
    blob_check,
    boolean_check,
    bytes_check,
    cid_link_check,
    integer_check,
    null_check,
    string_check,
    token_check,
    unknown_check,
)
from libkiki.lexicon.model import (
    ArrayType,
    BlobType,
    Body,
    BooleanType,
    BytesType,
    CidLinkType,
    Def,
    IntegerType,
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
)

if TYPE_CHECKING:
    from libkiki.lexicon.registry import Registry

__all__ = ["MAX_DEPTH", "Check", "Validator"]


# Recursive definitions (a thread view whose replies are thread views) are the only way data
# can nest without a bound the schema sets; this caps it below Python's own recursion limit.
MAX_DEPTH: Final = 128


def _join(prefix: str, parts: list[str]) -> str:
    path = prefix
    for part in reversed(parts):
        path = f"{path}{part}" if part.startswith("[") or not path else f"{path}.{part}"
    return path


_MISSING: Final = object()


class _Recursive:
    """The check of a definition that refers to itself, with a depth guard."""

    __slots__ = ("check", "depth")

    def __init__(self) -> None:
        self.check: Check | None = None
        self.depth = 0

    def __call__(self, v: Any) -> None:
        if self.depth >= MAX_DEPTH:
            raise Invalid(f"nests deeper than {MAX_DEPTH} levels")
        assert self.check is not None
        self.depth += 1
        try:
            self.check(v)
        finally:
            self.depth -= 1


# An object with more properties than this is checked by a loop instead of a generated
# function: generating and compiling source costs time and memory per property, and a
# provider's lexicon decides how many there are.
GENERATED_MAX_PROPERTIES: Final = 64

# What surely passes a property's check, cheaper than the check (see ``_passes``): a
# condition on ``x`` over the block's own bounds ``lo{i}`` and ``hi{i}``.
Passes = tuple[str, int | None, int | None]


def _passes(node: Def) -> Passes | None:
    """A condition on ``x`` under which ``node``'s check surely passes (None: none cheaper than
    the check), with the bounds it compares ``x`` to. Only bounds the check itself tests first
    are used, so when the condition is false the check runs and decides, with its own error."""
    if isinstance(node, StringType):
        if (node.min_length, node.min_graphemes, node.enum, node.const, node.format) != (
            (None,) * 5
        ):
            return None
        bounds = [
            int(b)
            for b in (None if node.max_length is None else node.max_length // 4, node.max_graphemes)
            if b is not None
        ]
        if not bounds:
            return "x.__class__ is str", None, None
        return "x.__class__ is str and len(x) <= hi{i}", None, min(bounds)
    if isinstance(node, IntegerType):
        if node.enum is not None or node.const is not None:
            return None
        low = None if node.minimum is None else int(node.minimum)
        high = None if node.maximum is None else int(node.maximum)
        condition = "x.__class__ is int"
        condition += "" if low is None else " and x >= lo{i}"
        condition += "" if high is None else " and x <= hi{i}"
        return condition, low, high
    if isinstance(node, BooleanType) and node.const is None:
        return "x is True or x is False", None, None
    return None


def _object_check(
    required: tuple[str, ...],
    nullable: frozenset[str],
    props: list[tuple[str, Check, Passes | None]],
) -> Check:
    """An object's check: one generated function, a block per property, in which a value that
    surely passes its property's check (``_passes``) skips the call; a loop over the
    properties for an object of more than ``GENERATED_MAX_PROPERTIES``. Property names, checks
    and bounds are bound as variables: the source is the fixed text below and block numbers."""
    if len(props) > GENERATED_MAX_PROPERTIES:
        return _object_loop(required, nullable, tuple((name, sub) for name, sub, _ in props))
    env: dict[str, Any] = {"Invalid": Invalid, "_MISSING": _MISSING, "required": required}
    lines = [
        "def check(v):",
        "    if not isinstance(v, dict):",
        '        raise Invalid("must be an object")',
        "    for name in required:",
        "        if name not in v:",
        '            raise Invalid("is required", name)',
    ]
    for i, (name, sub, passes) in enumerate(props):
        env[f"n{i}"], env[f"s{i}"] = name, sub
        condition = "x is not _MISSING"
        if name in nullable:
            condition += " and x is not None"
        if passes is not None:
            test, env[f"lo{i}"], env[f"hi{i}"] = passes
            condition += f" and not ({test.format(i=i)})"
        lines += [
            f"    x = v.get(n{i}, _MISSING)",
            f"    if {condition}:",
            "        try:",
            f"            s{i}(x)",
            "        except Invalid as exc:",
            f"            exc.parts.append(n{i})",
            "            raise",
        ]
    exec("\n".join(lines), env)  # the source: the fixed text above and block numbers
    check: Check = env["check"]
    return check


def _object_loop(
    required: tuple[str, ...], nullable: frozenset[str], props: tuple[tuple[str, Check], ...]
) -> Check:
    """An object's check as a loop over its properties (no shortcuts)."""

    def check(v: Any) -> None:
        if not isinstance(v, dict):
            raise Invalid("must be an object")
        for name in required:
            if name not in v:
                raise Invalid("is required", name)
        for name, sub in props:
            x = v.get(name, _MISSING)
            if x is _MISSING or (x is None and name in nullable):
                continue
            try:
                sub(x)
            except Invalid as exc:
                exc.parts.append(name)
                raise

    return check


class _Compiler:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.cache: dict[str, Any] = registry.compiled

    def ref(self, ref: str) -> Check:
        found = self.cache.get(ref)
        if found is not None:
            check: Check = found
            return check
        canonical, definition = self.registry.resolve(ref)
        if isinstance(definition, TokenType):
            check = self.cache[ref] = token_check(canonical)
            return check
        slot = _Recursive()
        self.cache[ref] = slot  # met again while compiling: the definition is recursive
        try:
            slot.check = self.node(definition, canonical)
        except BaseException:
            del self.cache[ref]
            raise
        # Later users call the check directly; only the recursive ones keep the guarded slot.
        check = self.cache[ref] = slot.check
        return check

    def node(self, node: Def, context: str) -> Check:
        if isinstance(node, StringType):
            return string_check(node)
        if isinstance(node, IntegerType):
            return integer_check(node)
        if isinstance(node, BooleanType):
            return boolean_check(node)
        if isinstance(node, ObjectType | ParamsType):
            return self.object(node, context)
        if isinstance(node, ArrayType):
            return self.array(node, context)
        if isinstance(node, RefType):
            return self.ref(node.ref)
        if isinstance(node, UnionType):
            return self.union(node)
        if isinstance(node, RecordType):
            return self.record(node, context)
        simple: dict[type, Check] = {
            NullType: null_check,
            UnknownType: unknown_check,
            CidLinkType: cid_link_check,
        }
        if type(node) in simple:
            return simple[type(node)]
        if isinstance(node, BytesType):
            return bytes_check(node)
        if isinstance(node, BlobType):
            return blob_check(node)
        raise LexiconError(context, "", f"a {type(node).__name__} does not describe data")

    def object(self, t: ObjectType | ParamsType, context: str) -> Check:
        nullable = frozenset(t.nullable) if isinstance(t, ObjectType) else frozenset()
        props = [(name, self.node(p, context), _passes(p)) for name, p in t.properties.items()]
        return _object_check(tuple(t.required), nullable, props)

    def array(self, t: ArrayType, context: str) -> Check:
        item = self.node(t.items, context)
        low, high = t.min_length, t.max_length

        def check(v: Any) -> None:
            if v.__class__ is not list and not isinstance(v, list | tuple):
                raise Invalid("must be an array")
            if low is not None and len(v) < low:
                raise Invalid(f"must have at least {low} items")
            if high is not None and len(v) > high:
                raise Invalid(f"must have at most {high} items")
            for i, x in enumerate(v):
                try:
                    item(x)
                except Invalid as exc:
                    exc.parts.append(f"[{i}]")
                    raise

        return check

    def union(self, t: UnionType) -> Check:
        members = {ref: self.ref(ref) for ref in t.refs}
        closed = t.closed
        expected = ", ".join(t.refs)

        def check(v: Any) -> None:
            if not isinstance(v, dict):
                raise Invalid("must be an object")
            kind = v.get("$type")
            if kind.__class__ is not str:
                raise Invalid(f"must have a $type (one of {expected})")
            sub = members.get(kind)
            if sub is None and kind.endswith("#main"):
                sub = members.get(kind[:-5])
            if sub is not None:
                sub(v)
            elif closed:
                raise Invalid(f"$type {kind} is not one of {expected}")

        return check

    def record(self, t: RecordType, context: str) -> Check:
        body = self.object(t.record, context)

        def check(v: Any) -> None:
            body(v)
            kind = v.get("$type", context)
            if kind != context:
                raise Invalid(f"must be {context!r}", "$type")

        return check

    def body(self, body: Body | None, context: str, what: str) -> Check:
        if body is None:

            def nothing(v: Any) -> None:
                if v is not None and v != {}:
                    raise Invalid(f"this method takes no {what}")

            return nothing
        if body.schema is None:
            return lambda v: None
        return self.node(body.schema, context)


class Validator:
    """Checks data against one definition; raise :class:`ValidationError` on the first problem.

    For a record or a plain type call :meth:`validate`; for an XRPC method use :meth:`params`,
    :meth:`input`, :meth:`output` or :meth:`message`, whose errors start with that word.
    """

    __slots__ = ("_checks", "definition", "ref")

    def __init__(self, registry: Registry, ref: str, definition: Def) -> None:
        self.ref = ref
        self.definition = definition
        compiler = _Compiler(registry)
        checks: dict[str, Check] = {}
        if isinstance(definition, QueryType | ProcedureType | SubscriptionType):
            params = definition.parameters or ParamsType()
            checks["params"] = compiler.object(params, ref)
            if isinstance(definition, ProcedureType):
                checks["input"] = compiler.body(definition.input, ref, "input")
            if isinstance(definition, QueryType | ProcedureType):
                checks["output"] = compiler.body(definition.output, ref, "output")
            if isinstance(definition, SubscriptionType):
                checks["message"] = compiler.body(definition.message, ref, "message")
        elif isinstance(definition, PermissionSetType):
            raise LexiconError(ref, "", "a permission-set does not describe data")
        else:
            checks[""] = compiler.ref(ref)
        self._checks: Mapping[str, Check] = checks

    def validate_part(self, part: str, value: Any) -> None:
        check = self._checks.get(part)
        if check is None:
            what = f"{part} of " if part else ""
            raise LexiconError(self.ref, "", f"there is no {what}data to validate here")
        try:
            check(value)
        except Invalid as exc:
            raise ValidationError(_join(part, exc.parts), exc.rule) from None

    def validate(self, value: Any) -> None:
        self.validate_part("", value)

    def params(self, value: Any) -> None:
        self.validate_part("params", value)

    def input(self, value: Any) -> None:
        self.validate_part("input", value)

    def output(self, value: Any) -> None:
        self.validate_part("output", value)

    def message(self, value: Any) -> None:
        self.validate_part("message", value)

    def is_valid(self, value: Any, part: str = "") -> bool:
        try:
            self.validate_part(part, value)
        except ValidationError:
            return False
        return True

    def check_for(self, part: str = "") -> Check:
        """The raw compiled check (raises a private error): for callers that only need a bool."""
        return self._checks[part]
