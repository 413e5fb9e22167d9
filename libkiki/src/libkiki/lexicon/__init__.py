"""Universal schemas: ATProto Lexicon documents, validation, bindings and compatibility.

::

    registry, problems = Registry.from_search_path()      # Kiki's + installed apps' lexicons
    registry.validator("dev.kiki.media.seek").input({"offsetUs": 5_000_000})
    source = generate(registry, ["dev.kiki.media.seek"], command="kiki schema gen …")
    breaks = compare(old_doc, new_doc)

Modules: :mod:`.formats` (string formats), :mod:`.model` and :mod:`.loader` (documents),
:mod:`.registry` (resolution, search path), :mod:`.validator` (compiled checks),
:mod:`.codegen` and :mod:`.runtime` (pydantic bindings), :mod:`.compat` (evolution rules),
:mod:`.manifest` and :mod:`.install` (apps).

The names above are imported from their modules on first use: a service that reads documents
(``libkiki.lexicon.loader``, ``.registry``) starts without the code generator and its pydantic
models, or the compatibility rules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from libkiki.lexicon.codegen import generate
    from libkiki.lexicon.compat import BreakingChange, compare, compare_sets
    from libkiki.lexicon.loader import lint_document, parse_document
    from libkiki.lexicon.model import LexiconDoc
    from libkiki.lexicon.registry import Registry, document_path, search_path
    from libkiki.lexicon.validator import Validator

# Each public name and the module (of this package) that defines it.
_HOMES = {
    "BreakingChange": "compat",
    "LexiconDoc": "model",
    "Registry": "registry",
    "Validator": "validator",
    "compare": "compat",
    "compare_sets": "compat",
    "document_path": "registry",
    "generate": "codegen",
    "lint_document": "loader",
    "parse_document": "loader",
    "search_path": "registry",
}

__all__ = [
    "BreakingChange",
    "LexiconDoc",
    "Registry",
    "Validator",
    "compare",
    "compare_sets",
    "document_path",
    "generate",
    "lint_document",
    "parse_document",
    "search_path",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
