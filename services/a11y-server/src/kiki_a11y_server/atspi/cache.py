"""An app's initial state in bulk, from AT-SPI's ``Cache.GetItems``.

One call answers, for every accessible the app's AT-SPI bridge holds, its role, name,
description, states, interfaces, parent and index in it: the tree's structure, published at
once. The children of a node whose child count disagrees with the items naming it as parent
(a node managing its descendants, or children the cache does not hold) are asked for and their
new children walked. What the answer lacks (bounds, actions, value, text:
:meth:`Calls.complete`) follows in the next update. An app without the interface is walked.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from kiki_a11y_server.atspi.model import Fetched

Children = Callable[[str], Awaitable[tuple[str, ...]]]


def from_items(dest: str, items: list[Any]) -> tuple[dict[str, Fetched], list[str]]:
    """The cache's items as first-round :class:`Fetched` (children from the parent refs, in
    index order), and the paths whose children the items do not fully list."""
    kids: dict[str, list[tuple[int, str]]] = defaultdict(list)
    mine: dict[str, Any] = {}  # path -> its item (the last, for a path listed twice)
    for item in items:
        (name, path), _app, (parent_name, parent), index = item[:4]
        if name != dest:
            continue
        if parent_name == dest:
            kids[parent].append((index, path))
        mine[path] = item
    first: dict[str, Fetched] = {}
    incomplete = []
    interfaces: dict[tuple[str, ...], frozenset[str]] = {}  # an app's few distinct sets
    for path, (_, _app, _parent, _index, count, ifaces, label, role, desc, states) in mine.items():
        listed = kids.get(path, [])
        listed.sort()
        if count != len(listed) or any(i < 0 for i, _ in listed):
            incomplete.append(path)
        first[path] = Fetched(
            path=path,
            role=int(role),
            name=str(label),
            description=str(desc),
            states=tuple(states),
            children=tuple(p for _, p in listed),
            interfaces=interfaces.get(key := tuple(ifaces))
            or interfaces.setdefault(
                key, frozenset(i.removeprefix("org.a11y.atspi.") for i in ifaces)
            ),
        )
    return first, incomplete


def _fields(f: Fetched) -> dict[str, Any]:
    return {name: getattr(f, name) for name in Fetched.__slots__}


async def structure(
    dest: str, items: list[Any], children: Children
) -> tuple[dict[str, Fetched], list[str]]:
    """The tree as the cache has it (children lists asked where the items fall short), and the
    children to walk as new (not in the cache). Bounds, actions and values are not in it."""
    first, incomplete = from_items(dest, items)
    lists = await asyncio.gather(*(children(path) for path in incomplete))
    missing: list[str] = []
    for path, listed in zip(incomplete, lists, strict=True):
        first[path] = Fetched(**{**_fields(first[path]), "children": listed})
        missing.extend(c for c in listed if c not in first)
    return first, missing
