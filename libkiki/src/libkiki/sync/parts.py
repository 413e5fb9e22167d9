"""The session document's parts: its top-level shared types, and which roles may write each.

A session's Yjs document has three parts the device and its controllers agree on, each typed by
a lexicon in ``schemas/lexicons/dev/kiki/session/`` (``dev.kiki.session.defs``):

| root | Yjs type | holds | written by |
|---|---|---|---|
| ``device`` | Map | the device's live state, one key per ``#deviceState`` property | device |
| ``intents`` | Map | intent id -> ``#intent``, what a controller asks for | controller, device |
| ``results`` | Map | intent id -> ``#result``, what came of it | device |

The ``device`` role writes every part: it is the device itself, or the device's link to the
edge carrying what the other end accepted. Roots no part names are open to every writer (apps'
scratch space, the conformance suite's ``text``/``map``/``array``); observers write nothing.
Both ends (the device relay and the edge) refuse an update that touches a part its sender's
role may not write, with close code 1008.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from libkiki.sync.tokens import WRITERS

Kind = Literal["map", "array", "text"]
LEXICON: Final = "dev.kiki.session.defs"


@dataclass(frozen=True, slots=True)
class Part:
    root: str  # the top-level shared type's name in the document
    kind: Kind
    entry: str  # the lexicon type of its entries (or, for ``device``, of the map as a whole)
    writers: frozenset[str]


PARTS: Final = (
    Part("device", "map", f"{LEXICON}#deviceState", frozenset({"device"})),
    Part("intents", "map", f"{LEXICON}#intent", frozenset({"controller", "device"})),
    Part("results", "map", f"{LEXICON}#result", frozenset({"device"})),
)
BY_ROOT: Final = {part.root: part for part in PARTS}


def may_write(role: str, root: str) -> bool:
    """Whether a member with ``role`` may change the top-level type ``root``."""
    if role not in WRITERS:
        return False
    part = BY_ROOT.get(root)
    return part is None or role in part.writers


def forbidden(role: str) -> tuple[Part, ...]:
    """The parts ``role`` may not write (every part for a role that writes nothing)."""
    return tuple(part for part in PARTS if not may_write(role, part.root))
