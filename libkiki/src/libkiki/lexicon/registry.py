"""A set of Lexicon documents that resolves references and hands out compiled validators.

A registry is filled from JSON values (:meth:`Registry.add_json`) or, as a convenience, from a
directory tree of ``*.json`` files laid out by NSID (:meth:`Registry.load_dir`). Loading never
stops at the first bad file: every problem becomes a :class:`~libkiki.errors.LexiconError` in
the returned list so ``kiki schema lint`` can report them all.

The search path for the published schemas is decided here (see :func:`search_path`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from libkiki.errors import Conflict, LexiconError
from libkiki.lexicon.files import json_files, read_json_file
from libkiki.lexicon.loader import lint_document
from libkiki.lexicon.model import (
    ArrayType,
    Body,
    Def,
    LexiconDoc,
    ObjectType,
    ParamsType,
    ProcedureType,
    QueryType,
    RecordType,
    RefType,
    SubscriptionType,
    UnionType,
    split_ref,
)
from libkiki.paths import state_dir

if TYPE_CHECKING:
    from libkiki.lexicon.validator import Validator

__all__ = [
    "ENV_LEXICON_PATH",
    "Registry",
    "bundled_lexicons",
    "document_path",
    "iter_refs",
    "search_path",
]

ENV_LEXICON_PATH: Final = "KIKI_LEXICON_PATH"
_SYSTEM_LEXICONS: Final = Path("/usr/share/kiki/lexicons")
_NOT_REFERABLE: Final = (ProcedureType, QueryType, SubscriptionType)
# Steps through nested types and the references between them, at most, from a definition to the
# end of its deepest chain. Published lexicons need 43 at most (app.bsky.feed.getActorLikes).
MAX_DEPTH: Final = 128


def bundled_lexicons() -> Path | None:
    """Kiki's own published lexicons: the checkout's ``schemas/lexicons``, else the image's copy."""
    checkout = Path(__file__).resolve().parents[4] / "schemas" / "lexicons"
    for candidate in (checkout, _SYSTEM_LEXICONS):
        if candidate.is_dir():
            return candidate
    return None


def search_path(env: Mapping[str, str] | None = None) -> list[Path]:
    """Where lexicons are looked up, first match winning.

    ``$KIKI_LEXICON_PATH`` (colon-separated) replaces the default, which is Kiki's own schemas
    followed by those installed apps published (``<state dir>/lexicons``). Kiki's come first so an
    installed app can never shadow a ``dev.kiki`` type.
    """
    env = os.environ if env is None else env
    if value := env.get(ENV_LEXICON_PATH):
        return [Path(p) for p in value.split(":") if p]
    bundled = bundled_lexicons()
    return [*([bundled] if bundled else []), state_dir(env) / "lexicons"]


def document_path(nsid: str) -> Path:
    """Where a document lives in a tree laid out by NSID: ``dev/kiki/media/playPause.json``."""
    *dirs, name = nsid.split(".")
    return Path(*dirs, f"{name}.json")


def _body_refs(body: Body | None, path: str) -> Iterator[tuple[str, str]]:
    if body is not None and body.schema is not None:
        yield from iter_refs(body.schema, f"{path}.schema")


def iter_refs(node: Def | Body, path: str) -> Iterator[tuple[str, str]]:
    """Every ``(json path, canonical ref)`` a node mentions, without following them."""
    if isinstance(node, RefType):
        yield f"{path}.ref", node.ref
    elif isinstance(node, UnionType):
        for i, ref in enumerate(node.refs):
            yield f"{path}.refs[{i}]", ref
    elif isinstance(node, ArrayType):
        yield from iter_refs(node.items, f"{path}.items")
    elif isinstance(node, ObjectType | ParamsType):
        for name, prop in node.properties.items():
            yield from iter_refs(prop, f"{path}.properties.{name}")
    elif isinstance(node, RecordType):
        yield from iter_refs(node.record, f"{path}.record")
    elif isinstance(node, QueryType | ProcedureType | SubscriptionType):
        if node.parameters is not None:
            yield from iter_refs(node.parameters, f"{path}.parameters")
        if isinstance(node, ProcedureType):
            yield from _body_refs(node.input, f"{path}.input")
        if isinstance(node, QueryType | ProcedureType):
            yield from _body_refs(node.output, f"{path}.output")
        if isinstance(node, SubscriptionType):
            yield from _body_refs(node.message, f"{path}.message")
    elif isinstance(node, Body):
        yield from _body_refs(node, path)


def _mandatory_refs(node: Def) -> Iterator[str]:
    """Refs a value of ``node`` must contain: a cycle of these admits no finite value."""
    if isinstance(node, RecordType):
        node = node.record
    if isinstance(node, RefType):
        yield node.ref
    elif isinstance(node, ArrayType) and (node.min_length or 0) > 0:
        yield from _mandatory_refs(node.items)
    elif isinstance(node, ObjectType):
        for name in node.required:
            if name not in node.nullable and name in node.properties:
                yield from _mandatory_refs(node.properties[name])


class Registry:
    """Documents by NSID; resolves ``nsid#def`` references; caches compiled validators."""

    def __init__(self, documents: Iterable[LexiconDoc] = ()) -> None:
        self._docs: dict[str, LexiconDoc] = {}
        self._validators: dict[str, Validator] = {}
        self.compiled: dict[str, Any] = {}  # validator closures by ref, owned by the validator
        for doc in documents:
            self.add(doc)

    # -- filling -------------------------------------------------------------------------------

    def add(self, doc: LexiconDoc, *, replace: bool = False) -> None:
        """Add a parsed document; a different document under a taken NSID is a conflict."""
        old = self._docs.get(doc.id)
        if old is not None and not replace and old != doc:
            raise Conflict(f"lexicon {doc.id} is already registered with different content")
        self._docs[doc.id] = doc
        self._validators.clear()
        self.compiled.clear()

    def add_json(self, raw: Any, source: str | None = None) -> list[LexiconError]:
        """Parse and add one document; returns its problems (nothing is added when there are)."""
        doc, errors = lint_document(raw, source)
        if doc is not None and not errors:
            self.add(doc)
        return errors

    def load_dir(self, root: Path, *, shadowed: bool = False) -> list[LexiconError]:
        """Load every ``*.json`` under ``root``; returns the problems of the files that failed.

        With ``shadowed``, an NSID already in the registry keeps its earlier document (search
        path semantics: the first directory wins) instead of being reported.
        """
        errors: list[LexiconError] = []
        seen: dict[str, Path] = {}
        for file in json_files(root, errors):
            try:
                raw = read_json_file(file)
            except LexiconError as exc:
                errors.append(exc)
                continue
            doc, problems = lint_document(raw, str(file))
            if doc is None or problems:
                errors.extend(problems)
                continue
            if doc.id in seen:
                rule = f"NSID is also defined by {seen[doc.id]}"
                errors.append(LexiconError(str(file), "id", rule))
                continue
            seen[doc.id] = file
            if doc.id in self._docs and shadowed:
                continue
            try:
                self.add(doc)
            except Conflict as exc:
                errors.append(LexiconError(str(file), "id", exc.message))
        return errors

    @classmethod
    def from_search_path(
        cls, paths: Iterable[Path] | None = None
    ) -> tuple[Registry, list[LexiconError]]:
        registry = cls()
        errors: list[LexiconError] = []
        for directory in search_path() if paths is None else paths:
            if directory.is_dir():
                errors.extend(registry.load_dir(directory, shadowed=True))
        return registry, errors

    # -- lookup --------------------------------------------------------------------------------

    def __contains__(self, nsid: object) -> bool:
        return nsid in self._docs

    def __len__(self) -> int:
        return len(self._docs)

    def documents(self) -> list[LexiconDoc]:
        return [self._docs[k] for k in sorted(self._docs)]

    def document(self, nsid: str) -> LexiconDoc:
        try:
            return self._docs[nsid]
        except KeyError:
            raise LexiconError(nsid, "", "no such lexicon is published") from None

    def resolve(self, ref: str, context: str | None = None) -> tuple[str, Def]:
        """``(canonical ref, definition)`` for ``nsid#def``, ``nsid`` or, with a context NSID,
        ``#def``. Raises :class:`LexiconError` when it does not resolve."""
        if ref.startswith("#"):
            if context is None:
                raise LexiconError(ref, "", "a local reference needs the document it is in")
            ref = context + ref
        nsid, name = split_ref(ref)
        doc = self._docs.get(nsid)
        if doc is None:
            raise LexiconError(context or nsid, "", f"{ref} does not resolve: no lexicon {nsid}")
        definition = doc.defs.get(name)
        if definition is None:
            raise LexiconError(context or nsid, "", f"{ref} does not resolve: {nsid} has no {name}")
        return (nsid if name == "main" else f"{nsid}#{name}"), definition

    # -- consistency ---------------------------------------------------------------------------

    def check(self, only: Iterable[str] | None = None) -> list[LexiconError]:
        """Unresolved references, references to things that cannot be referenced, union members
        that are not objects, and cycles of required references (no finite value satisfies them).
        ``only`` limits the check to those documents' own references."""
        errors: list[LexiconError] = []
        nsids = sorted(self._docs) if only is None else sorted(set(only))
        for nsid in nsids:
            doc = self.document(nsid)
            for name, definition in doc.defs.items():
                for path, ref in iter_refs(definition, f"defs.{name}"):
                    errors.extend(self._check_ref(nsid, path, ref))
        errors.extend(self._cycles(nsids))
        errors.extend(self._too_deep(nsids))
        return errors

    def _check_ref(self, nsid: str, path: str, ref: str) -> list[LexiconError]:
        try:
            _, target = self.resolve(ref)
        except LexiconError as exc:
            return [LexiconError(nsid, path, exc.rule)]
        if isinstance(target, _NOT_REFERABLE):
            return [LexiconError(nsid, path, f"{ref} is an XRPC endpoint and cannot be referenced")]
        if ".refs[" in path and not isinstance(target, ObjectType | RecordType):
            return [LexiconError(nsid, path, f"union member {ref} must be an object or record")]
        return []

    def _cycles(self, nsids: list[str]) -> list[LexiconError]:
        # Iterative depth-first search: no recursion, however long the chains are.
        errors: list[LexiconError] = []
        state: dict[str, int] = {}  # 1 on the current path, 2 finished
        for start_nsid in nsids:
            for name in self._docs[start_nsid].defs:
                start = start_nsid if name == "main" else f"{start_nsid}#{name}"
                if start in state:
                    continue
                path = [start]
                state[start] = 1
                stack = [iter(self._edges(start))]
                while stack:
                    nxt = next(stack[-1], None)
                    if nxt is None:
                        state[path.pop()] = 2
                        stack.pop()
                    elif state.get(nxt) == 1:
                        cycle = [*path[path.index(nxt) :], nxt]
                        nsid, def_name = split_ref(nxt)
                        rule = "circular required references: " + " -> ".join(cycle)
                        errors.append(LexiconError(nsid, f"defs.{def_name}", rule))
                    elif nxt not in state:
                        state[nxt] = 1
                        path.append(nxt)
                        stack.append(iter(self._edges(nxt)))
        return errors

    def _too_deep(self, nsids: list[str]) -> list[LexiconError]:
        """Definitions whose references, followed, nest deeper than MAX_DEPTH steps: the
        validator's compiler and the code generator recurse once per step, and a chain of
        hundreds would end them in a RecursionError. A reference back into the chain being
        followed is not followed (both stop there too). Iterative, like :meth:`_cycles`."""
        depth: dict[str, int] = {}  # steps from a definition to the end of its deepest chain
        errors: list[LexiconError] = []
        for nsid in nsids:
            for name in self._docs[nsid].defs:
                start = nsid if name == "main" else f"{nsid}#{name}"
                if start not in depth:
                    self._measure(start, depth)
                if depth[start] > MAX_DEPTH:
                    rule = f"its references nest {depth[start]} steps deep (at most {MAX_DEPTH})"
                    errors.append(LexiconError(nsid, f"defs.{name}", rule))
        return errors

    def _measure(self, start: str, depth: dict[str, int]) -> None:
        # A frame: [ref, its (steps, target) edges, deepest so far, steps of the edge followed]
        stack: list[list[Any]] = [[start, iter(self._steps(start)), 0, 0]]
        on_path = {start}
        while stack:
            top = stack[-1]
            edge = next(top[1], None)
            if edge is None:
                stack.pop()
                on_path.discard(top[0])
                depth[top[0]] = top[2]
                if stack:
                    stack[-1][2] = max(stack[-1][2], stack[-1][3] + top[2])
                continue
            steps, target = edge
            if target in on_path:
                top[2] = max(top[2], steps)
            elif target in depth:
                top[2] = max(top[2], steps + depth[target])
            else:
                top[3] = steps
                on_path.add(target)
                stack.append([target, iter(self._steps(target)), 0, 0])

    def _steps(self, ref: str) -> list[tuple[int, str]]:
        """A definition's references, each with the steps from the definition to it."""
        try:
            _, definition = self.resolve(ref)
        except LexiconError:
            return []
        found = iter_refs(definition, "")
        return [(path.count(".") + path.count("["), target) for path, target in found]

    def _edges(self, ref: str) -> list[str]:
        try:
            _, definition = self.resolve(ref)
        except LexiconError:
            return []
        return list(_mandatory_refs(definition))

    # -- validation ----------------------------------------------------------------------------

    def validator(self, ref: str) -> Validator:
        """The compiled validator for a definition (``nsid`` or ``nsid#def``), built once."""
        found = self._validators.get(ref)
        if found is None:
            from libkiki.lexicon.validator import Validator

            canonical, definition = self.resolve(ref)
            found = self._validators[ref] = Validator(self, canonical, definition)
        return found
