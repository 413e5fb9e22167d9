"""Fetching an app's accessibles level by level (I/O injected: tested without a bus).

``walk`` fetches the paths it starts from and every descendant that is new to the mirror,
breadth first, each level's fetches sent together (at most ``concurrency`` at once, bounded by
the caller's ``fetch``). A dirty node's children already in the mirror are not fetched again:
their own events say when they change. The walk stops adding nodes at ``max_nodes``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from kiki_a11y_server.atspi.model import AppModel, Fetched
from libkiki.errors import KikiError, Timeout

Fetch = Callable[[str], Awaitable[Fetched | KikiError]]


async def walk(
    fetch: Fetch,
    model: AppModel,
    start: list[tuple[str, bool]],
    *,
    max_nodes: int,
    max_children: int,
    refresh: Fetch | None = None,
) -> tuple[dict[str, Fetched], list[tuple[str, str]]]:
    """Fetch ``start`` (path, whether it is new) and the new descendants.

    ``refresh`` (if given) fetches a path already in the mirror (the start's old paths).
    Returns what was fetched (parents before children) and the paths that failed (an error
    answer: gone meanwhile, or not ready yet), each with the path of the parent that listed
    it ("" for a start path). A :class:`~libkiki.errors.Timeout` propagates: the app is hung."""
    fetched: dict[str, Fetched] = {}
    failed: list[tuple[str, str]] = []
    seen = {path for path, _ in start}
    parents: dict[str, str] = {}
    frontier = start
    while frontier:
        results = await asyncio.gather(
            *(fetch(path) if new or refresh is None else refresh(path) for path, new in frontier)
        )
        following: list[tuple[str, bool]] = []
        for (path, new), result in zip(frontier, results, strict=True):
            if isinstance(result, Timeout):
                raise result
            if isinstance(result, KikiError):
                failed.append((path, parents.get(path, "")))
                continue
            fetched[path] = result
            children = result.children if new else tuple(model.new_children(result))
            for child in children[:max_children]:
                if child not in seen and len(seen) < max_nodes:
                    seen.add(child)
                    parents[child] = path
                    following.append((child, True))
        frontier = following
    return fetched, failed
