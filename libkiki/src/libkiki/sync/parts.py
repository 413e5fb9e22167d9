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

A part may also be *add-only* for some of its writers: a ``controller`` only adds new intents.
Each entry it writes must be a new key whose value is a JSON object naming the writer's token
``sub`` as its ``by``; changing or deleting an entry (its own included) is refused with 1008.
The ``device`` role changes and prunes them.
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
    # Writers that may only add new entries (not change or delete one), each a JSON object
    # whose ``by`` is the writer's token ``sub``.
    adders: frozenset[str] = frozenset()


PARTS: Final = (
    Part("device", "map", f"{LEXICON}#deviceState", frozenset({"device"})),
    Part(
        "intents",
        "map",
        f"{LEXICON}#intent",
        frozenset({"controller", "device"}),
        adders=frozenset({"controller"}),
    ),
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


def add_only(role: str) -> tuple[Part, ...]:
    """The parts ``role`` writes by adding new entries only."""
    return tuple(part for part in PARTS if role in part.adders)


def added_entry_problem(part: Part, key: str, action: str, value: object, sub: str) -> str | None:
    """Why an add-only writer with token ``sub`` may not make this change of ``part``'s entry
    ``key`` (``action``: ``add``, ``update`` or ``delete``, as a Yjs map event names it), or
    ``None`` when it may."""
    noun = part.root.removesuffix("s")
    if action != "add":
        return f"a {noun} may only be added, not changed or deleted ({key[:64]})"
    if not isinstance(value, dict):
        return f"{noun} {key[:64]} is not a JSON object"
    by = value.get("by")
    if by != sub:
        shown = by[:64] if isinstance(by, str) else repr(by)[:64]
        return f"{noun} by {shown} from a connection of {sub[:64]}"
    return None
