"""Where an app's nodes are on screen when the app does not say so (sans-I/O).

AT-SPI's ``bounds-changed`` carries the toolkit's allocation, not screen coordinates, so each
one has the node's extents asked again; but GTK re-announces an unchanged allocation every frame
(a spinner), and says nothing at all when a window moves (no ``bounds-changed``, no
``window:move``) though every node in it moves on screen, nor when a resize moves a notebook's
tabs a frame later. :class:`BoundsWatch` decides what to ask: an event now, unless it repeats
the node's previous rectangle (then at the next watch); and at each watch (the app's windows
asked for their extents on a clock), every node under a window whose extents changed since the
last watch, and once more at the watch after (the app lays the window out after its own extents
change).
"""

from __future__ import annotations

from collections.abc import Mapping

Rect = tuple[int, int, int, int]


class BoundsWatch:
    def __init__(self, *, max_paths: int = 20_000, max_repeats: int = 2_000) -> None:
        self.max_paths = max_paths
        self.max_repeats = max_repeats
        self._rects: dict[str, object] = {}  # the last bounds-changed rectangle of each path
        self._repeated: set[str] = set()  # paths whose event repeated: asked at the watch
        self._windows: dict[str, Rect | None] = {}  # extents the last watch saw
        self._moved: set[str] = set()  # windows whose extents changed at the last watch

    def event(self, path: str, rect: object) -> bool:
        """A ``bounds-changed`` of ``path``: True to ask for its extents now, False when it
        repeats the last one (put off to the next watch, not dropped: the same allocation can
        sit elsewhere on screen once a parent scrolled)."""
        if self._rects.get(path) != rect:
            if len(self._rects) >= self.max_paths:
                self._rects.clear()  # bounded: a forgotten rectangle costs one early ask
            self._rects[path] = rect
            return True
        if len(self._repeated) < self.max_repeats:
            self._repeated.add(path)
        return False

    def watched(
        self, seen: Mapping[str, Rect | None], mirror: Mapping[str, Rect | None]
    ) -> tuple[set[str], set[str]]:
        """The windows' extents a watch read (``seen``; ``mirror``: what the mirror holds, for
        a window this watch has not seen before): the windows to ask for every node under
        them, and the paths to ask for their own extents (events that repeated).

        Compared with the last watch, not with the mirror: an app may announce a window's own
        new extents (GTK does on a resize), which then reach the mirror through the events
        while the nodes inside, which it does not announce, stay where they were."""
        moved = {
            path for path, now in seen.items() if now != self._windows.get(path, mirror.get(path))
        }
        windows = moved | (self._moved & set(seen))
        self._windows, self._moved = dict(seen), moved
        repeated, self._repeated = self._repeated, set()
        return windows, repeated
