"""Finding nodes in accessibility trees: the one rule the a11y-server's ``Query``, its
``dev.kiki.a11y.find`` tool and a client's :meth:`Mirror.find <libkiki.a11y.client.Mirror.find>`
all apply, so that a search gives the same nodes wherever it runs.

A node matches when every given criterion holds: its role is ``role`` (0: any), it has every
state bit of ``states``, ``name`` is a case-insensitive substring of its name, and ``text`` one of
its name, value or description. At most ``limit`` matches are returned, in tree order;
``total`` counts every match. A ``limit`` of 0 means :data:`DEFAULT_LIMIT`; one above
:data:`MAX_LIMIT` is lowered to it (an answer of a million nodes helps nobody and costs the
server a frame that size).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol, TypeVar

from libkiki.a11y import wire

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class SearchableTree(Protocol):
    @property
    def tree_id(self) -> int: ...
    @property
    def app(self) -> wire.App: ...
    @property
    def nodes(self) -> Mapping[int, wire.Node]: ...


T = TypeVar("T", bound=SearchableTree)


def effective_limit(limit: int) -> int:
    """The number of nodes a search asked for ``limit`` returns at most."""
    return min(limit or DEFAULT_LIMIT, MAX_LIMIT)


def matcher(q: wire.Query) -> Callable[[wire.Node], bool]:
    """Whether a node matches ``q``'s criteria (its ``tree_id``, ``app_id`` and ``limit`` aside)."""
    role, states = q.role, q.states
    name, text = q.name.casefold(), q.text.casefold()

    def match(node: wire.Node) -> bool:
        if role and node.role != role:
            return False
        if states and node.states & states != states:
            return False
        if name and name not in node.name.casefold():
            return False
        return not text or any(
            text in s.casefold() for s in (node.name, node.value, node.description)
        )

    return match


def search(trees: Iterable[T], q: wire.Query) -> tuple[list[tuple[T, wire.Node]], int]:
    """The matches of ``q`` among ``trees`` (only its ``tree_id`` and ``app_id``, when given),
    each with its tree, at most :func:`effective_limit` of them; and the count of all."""
    limit = effective_limit(q.limit)
    match = matcher(q)
    found: list[tuple[T, wire.Node]] = []
    total = 0
    for tree in trees:
        if q.tree_id and tree.tree_id != q.tree_id:
            continue
        if q.app_id and tree.app.app_id != q.app_id:
            continue
        for node in tree.nodes.values():
            if match(node):
                total += 1
                if len(found) < limit:
                    found.append((tree, node))
    return found, total
