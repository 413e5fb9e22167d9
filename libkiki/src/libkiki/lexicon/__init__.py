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
"""

from libkiki.lexicon.codegen import generate
from libkiki.lexicon.compat import BreakingChange, compare, compare_sets
from libkiki.lexicon.loader import lint_document, parse_document
from libkiki.lexicon.model import LexiconDoc
from libkiki.lexicon.registry import Registry, document_path, search_path
from libkiki.lexicon.validator import Validator

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
