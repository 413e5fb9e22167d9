"""What the bridge asks for when bounds change, or move without the app saying so (sans-I/O:
:class:`~kiki_a11y_server.atspi.bounds.BoundsWatch`)."""

from __future__ import annotations

import pytest

from kiki_a11y_server.atspi.bounds import BoundsWatch

pytestmark = pytest.mark.unit


def test_a_repeated_bounds_changed_waits_for_the_watch() -> None:
    watch = BoundsWatch()
    assert watch.event("/spinner", (1, 2, 16, 16))  # new: asked now
    for _ in range(30):  # the same allocation, every frame
        assert not watch.event("/spinner", (1, 2, 16, 16))
    assert watch.event("/spinner", (1, 2, 20, 16))  # a different one: asked now
    assert not watch.event("/spinner", (1, 2, 20, 16))
    assert watch.watched({}, {}) == (set(), {"/spinner"})  # once, at the watch
    assert watch.watched({}, {}) == (set(), set())


def test_a_moved_window_is_read_whole_at_that_watch_and_the_next() -> None:
    watch = BoundsWatch()
    still = {"/win": (0, 0, 800, 600)}
    assert watch.watched(still, still) == (set(), set())  # as the mirror has it
    moved = {"/win": (120, 80, 800, 600)}
    assert watch.watched(moved, still) == ({"/win"}, set())
    assert watch.watched(moved, moved) == ({"/win"}, set())  # the layout that follows
    assert watch.watched(moved, moved) == (set(), set())


def test_the_watch_compares_with_what_it_saw_not_with_the_mirror() -> None:
    """A resize the app announces for the window itself reaches the mirror through the
    events; the nodes inside, which it does not announce, must still be asked."""
    watch = BoundsWatch()
    before = {"/win": (0, 0, 800, 600)}
    watch.watched(before, before)
    after = {"/win": (0, 0, 500, 500)}
    assert watch.watched(after, after) == ({"/win"}, set())


def test_its_memory_is_bounded() -> None:
    watch = BoundsWatch(max_paths=10, max_repeats=3)
    for i in range(25):
        assert watch.event(f"/n{i}", (i, 0, 1, 1))
        assert not watch.event(f"/n{i}", (i, 0, 1, 1))
    assert len(watch.watched({}, {})[1]) == 3
