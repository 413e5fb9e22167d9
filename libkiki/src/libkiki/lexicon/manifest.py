"""App manifests and the check that an app's whole public surface is published.

Sans-I/O: :func:`check_app` takes the decoded manifest, the app's own lexicon documents, the
hashes of its component bundles and the registry of what is already published (Kiki's lexicons
and those of installed apps), and returns every problem. Reading the app directory and writing
the state directory is :mod:`libkiki.lexicon.install`'s job.

The manifest format is itself a lexicon, ``dev.kiki.app.manifest``; see ``libkiki/LEXICON.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from libkiki.errors import KikiError, LexiconError, ValidationError
from libkiki.lexicon.compat import compare
from libkiki.lexicon.model import (
    LexiconDoc,
    ObjectType,
    PermissionSetType,
    ProcedureType,
    QueryType,
    RecordType,
    SubscriptionType,
    split_ref,
)
from libkiki.lexicon.registry import Registry, iter_refs

__all__ = [
    "MANIFEST_FILE",
    "MANIFEST_NSID",
    "AppCheck",
    "Component",
    "Manifest",
    "check_app",
    "reachable_documents",
]

MANIFEST_FILE: Final = "kiki-app.json"
MANIFEST_NSID: Final = "dev.kiki.app.manifest"


@dataclass(frozen=True, slots=True)
class Component:
    nsid: str
    bundle: str
    sha256: str


@dataclass(frozen=True, slots=True)
class Manifest:
    id: str
    version: str
    tools: tuple[str, ...]
    events: tuple[str, ...]
    components: tuple[Component, ...]
    permissions: tuple[str, ...]
    name: str | None = None

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Manifest:
        """Build from a manifest that already passed the ``dev.kiki.app.manifest`` validator."""
        return cls(
            id=raw["id"],
            version=raw["version"],
            tools=tuple(raw.get("tools", ())),
            events=tuple(raw.get("events", ())),
            components=tuple(
                Component(c["nsid"], c["bundle"], c["sha256"].lower())
                for c in raw.get("components", ())
            ),
            permissions=tuple(p["nsid"] for p in raw.get("permissions", ())),
            name=raw.get("name"),
        )


@dataclass(frozen=True, slots=True)
class AppCheck:
    """The outcome of checking an app: usable only when ``problems`` is empty."""

    manifest: Manifest | None
    documents: tuple[LexiconDoc, ...]
    registry: Registry  # the published lexicons plus the app's own
    problems: tuple[KikiError, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


_KINDS: Final = {
    "tools": ((QueryType, ProcedureType), "a query or procedure"),
    "events": ((SubscriptionType,), "a subscription"),
    "components": ((ObjectType, RecordType), "an object"),
    "permissions": (
        (QueryType, ProcedureType, SubscriptionType, PermissionSetType),
        "a query, procedure, subscription or permission-set",
    ),
}


def _surface(manifest: Manifest) -> Iterable[tuple[str, str]]:
    for i, nsid in enumerate(manifest.tools):
        yield f"tools[{i}]", nsid
    for i, nsid in enumerate(manifest.events):
        yield f"events[{i}]", nsid
    for i, component in enumerate(manifest.components):
        yield f"components[{i}].nsid", component.nsid
    for i, nsid in enumerate(manifest.permissions):
        yield f"permissions[{i}].nsid", nsid


def check_app(
    raw_manifest: Any,
    documents: Iterable[LexiconDoc],
    bundle_hashes: Mapping[str, str | None],
    published: Registry,
    *,
    allow_breaking: bool = False,
) -> AppCheck:
    """Check an app before install.

    ``bundle_hashes`` maps each bundle path the manifest names to the sha256 of the file found
    there (``None`` when missing). A published document under the app's own id is an earlier
    version of this app's lexicon: the new one must be compatible unless ``allow_breaking``.
    """
    docs = tuple(documents)
    problems: list[KikiError] = []
    try:
        published.validator(MANIFEST_NSID).validate(raw_manifest)
    except ValidationError as exc:
        path = f"manifest.{exc.path}" if exc.path else "manifest"
        return AppCheck(None, docs, published, (ValidationError(path, exc.rule),))
    manifest = Manifest.from_json(raw_manifest)

    combined = Registry(published.documents())
    for doc in docs:
        if not doc.id.startswith(manifest.id + "."):
            rule = f"an app publishes lexicons only under its id {manifest.id}"
            problems.append(LexiconError(doc.id, "id", rule))
            continue
        if doc.id in published:
            previous = published.document(doc.id)
            breaks = [] if allow_breaking else compare(previous, doc)
            problems.extend(
                LexiconError(b.document, b.path, f"breaking change: {b.rule}") for b in breaks
            )
        combined.add(doc, replace=True)
    problems.extend(combined.check(only=[d.id for d in docs]))

    for where, nsid in _surface(manifest):
        field = where.split("[")[0]
        kinds, what = _KINDS[field]
        try:
            _, definition = combined.resolve(nsid)
        except LexiconError:
            rule = f"{nsid} is not a published lexicon (the app's own, Kiki's or an installed one)"
            problems.append(ValidationError(f"manifest.{where}", rule))
            continue
        if not isinstance(definition, kinds):
            problems.append(ValidationError(f"manifest.{where}", f"{nsid} is not {what}"))

    for i, component in enumerate(manifest.components):
        found = bundle_hashes.get(component.bundle)
        where = f"manifest.components[{i}]"
        if found is None:
            problems.append(
                ValidationError(f"{where}.bundle", f"{component.bundle} does not exist")
            )
        elif found != component.sha256:
            rule = f"does not match the bundle ({component.bundle} has sha256 {found})"
            problems.append(ValidationError(f"{where}.sha256", rule))
    return AppCheck(manifest, docs, combined, tuple(problems))


def reachable_documents(registry: Registry, roots: Iterable[str]) -> list[str]:
    """The NSIDs of ``roots`` and every document they refer to, directly or not."""
    pending = [split_ref(r)[0] for r in roots]
    seen: set[str] = set()
    while pending:
        nsid = pending.pop()
        if nsid in seen or nsid not in registry:
            continue
        seen.add(nsid)
        for name, definition in registry.document(nsid).defs.items():
            pending.extend(split_ref(ref)[0] for _, ref in iter_refs(definition, name))
    return sorted(seen)
