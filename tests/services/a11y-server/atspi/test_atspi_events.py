"""The bridge's sans-I/O handling of AT-SPI events that carry their change, and of the cache's
answer (``Cache.GetItems``) as a tree's structure."""

from __future__ import annotations

import dataclasses

import pytest

from kiki_a11y_server.atspi import roles
from kiki_a11y_server.atspi.bounds import BoundsWatch
from kiki_a11y_server.atspi.cache import from_items
from kiki_a11y_server.atspi.model import ALL, PATCHED, AppModel, Fetched, aspect_of
from libkiki.a11y import wire

pytestmark = pytest.mark.unit

S = wire.STATES
PUSH_BUTTON = roles.ATSPI_ROLES.index("push button")
ENTRY = roles.ATSPI_ROLES.index("entry")


def states(*names: str) -> tuple[int, int]:
    bits = 0
    for name in names:
        bits |= 1 << roles.ATSPI_STATE_BITS[name]
    return (bits & 0xFFFFFFFF, bits >> 32)


def text_entry() -> tuple[AppModel, int]:
    model = AppModel()
    entry = Fetched(
        "/r",
        ENTRY,
        states=states("editable", "enabled", "visible", "showing"),
        interfaces=frozenset({"Text", "EditableText"}),
        value="hello",
    )
    (node,) = model.apply({"/r": entry}, root="/r").nodes
    return model, node.id


def republished(model: AppModel) -> wire.Node:
    dirty = model.take_dirty()
    assert dirty == {"/r": {PATCHED}}
    known = model.known("/r")
    assert known is not None
    (node,) = model.apply({"/r": known}).nodes
    return node


def test_text_and_state_events_patch_the_mirror_without_a_call() -> None:
    model, node_id = text_entry()
    assert model.patch("/r", "TextChanged", "delete", 0, 5, "hello")
    assert model.patch("/r", "TextChanged", "insert:system", 0, 3, "bye")
    assert republished(model).value == "bye"
    assert model.patch("/r", "StateChanged", "focused", 1, 0, 0)
    assert republished(model).states & S["focused"]
    assert model.patch("/r", "StateChanged", "focused", 0, 0, 0)
    assert model.patch("/r", "PropertyChange", "accessible-name", 0, 0, "Name")
    node = republished(model)
    assert (node.name, node.states & S["focused"]) == ("Name", 0)
    assert node.id == node_id


def test_events_that_cannot_be_applied_ask_for_a_fetch() -> None:
    model, _ = text_entry()
    # A deletion that does not match the mirror's text, an offset past it, unknown details.
    assert not model.patch("/r", "TextChanged", "delete", 0, 2, "xx")
    assert not model.patch("/r", "TextChanged", "insert", 99, 1, "x")
    assert not model.patch("/r", "StateChanged", "no-such-state", 1, 0, 0)
    assert not model.patch("/r", "BoundsChanged", "", 0, 0, 0)
    assert not model.patch("/elsewhere", "StateChanged", "focused", 1, 0, 0)
    # While the path is being fetched, its fetch may predate the event: fetched again later.
    model.mark("/r", "state")
    model.take_dirty()
    assert not model.patch("/r", "StateChanged", "focused", 1, 0, 0)
    assert aspect_of("TextChanged", "insert") == "value"
    assert aspect_of("ChildrenChanged", "add") == "children"
    assert aspect_of("PropertyChange", "accessible-name") == "name"
    assert aspect_of("PropertyChange", "accessible-role") == ALL


def test_cache_items_give_the_structure_and_say_which_lists_fall_short() -> None:
    app = (":1.5", "/root")
    ACC, COMPONENT = "org.a11y.atspi.Accessible", "org.a11y.atspi.Component"
    items = [
        ((":1.5", "/root"), app, (":1.5", "/null"), -1, 2, [ACC], "app", 75, "", [0, 0]),
        ((":1.5", "/w"), app, (":1.5", "/root"), 0, 2, [COMPONENT], "win", 23, "", [1 << 8, 0]),
        ((":1.5", "/b"), app, (":1.5", "/w"), 1, 0, [], "OK", PUSH_BUTTON, "", [0, 0]),
        ((":1.5", "/a"), app, (":1.5", "/w"), 0, 0, [], "Cancel", PUSH_BUTTON, "", [0, 0]),
        ((":1.9", "/x"), app, (":1.5", "/w"), 2, 0, [], "other app", PUSH_BUTTON, "", [0, 0]),
    ]  # fmt: skip
    first, incomplete = from_items(":1.5", items)
    assert first["/w"].children == ("/a", "/b")
    assert first["/w"].interfaces == frozenset({"Component"})
    assert first["/w"].name == "win"
    assert "/x" not in first
    # The root counts 2 children and the items name 1 of them: its list is asked for.
    assert incomplete == ["/root"]


FRAME = roles.ATSPI_ROLES.index("frame")
APPLICATION = roles.ATSPI_ROLES.index("application")


def test_bounds_changed_asks_for_bounds_and_a_window_marks_what_it_holds() -> None:
    assert aspect_of("BoundsChanged", "") == "bounds"
    model = AppModel()
    component = frozenset({"Component"})
    fetched = {
        "/app": Fetched("/app", APPLICATION, children=("/win", "/popup")),
        "/win": Fetched(
            "/win", FRAME, children=("/b",), interfaces=component, extents=(0, 0, 9, 9)
        ),
        "/popup": Fetched("/popup", FRAME, interfaces=frozenset()),  # no Component: not asked
        "/b": Fetched("/b", PUSH_BUTTON, interfaces=component, extents=(1, 1, 2, 2)),
    }
    model.apply(fetched, root="/app")
    assert model.windows() == [("/win", (0, 0, 9, 9))]
    assert model.mark_extents_under("/win")
    assert model.take_dirty() == {}  # not dirty: a queue of extents of its own
    assert sorted(model.take_extents()) == ["/b", "/win"]
    # A moved button's new extents (what Calls.refresh asks for "bounds") become its bounds.
    moved = dataclasses.replace(fetched["/b"], extents=(5, 5, 2, 2))
    (node,) = model.apply({"/b": moved}).nodes
    assert node.bounds == (5, 5, 2, 2)


def test_a_big_moved_window_keeps_its_node_ids() -> None:
    """More nodes than max_dirty under a window that moves: their extents are asked in chunks
    of max_dirty, never a resync (which would give every node a new id and kill every ref)."""
    model = AppModel(max_nodes=3000, max_dirty=100)
    component = frozenset({"Component"})
    buttons = [f"/b{i}" for i in range(250)]
    fetched = {
        "/app": Fetched("/app", APPLICATION, children=("/win",)),
        "/win": Fetched(
            "/win", FRAME, children=tuple(buttons), interfaces=component, extents=(0, 0, 9, 9)
        ),
        **{b: Fetched(b, PUSH_BUTTON, interfaces=component, extents=(1, 1, 2, 2)) for b in buttons},
    }
    model.apply(fetched, root="/app")
    ids = dict(model.ids)
    watch = BoundsWatch()
    still = dict(model.windows())
    watch.watched(still, still)
    for _ in range(2):  # the watch that sees the move, and the one after
        windows, _ = watch.watched({"/win": (100, 100, 9, 9)}, still)
        for window in windows:
            assert model.mark_extents_under(window)
    assert not model.resync
    assert not model.dirty
    moved_to = {}
    while chunk := model.take_extents():
        assert len(chunk) <= 100
        moved = {p: dataclasses.replace(fetched[p], extents=(101, 101, 2, 2)) for p in chunk}
        for node in model.apply(moved).nodes:
            moved_to[node.id] = node.bounds
    assert model.ids == ids
    assert len(moved_to) == 251
    assert moved_to[ids["/b7"]] == (101, 101, 2, 2)


def test_the_extents_queue_is_bounded_by_max_nodes() -> None:
    model = AppModel(max_nodes=5, max_dirty=2)
    fetched = {
        "/app": Fetched("/app", APPLICATION, children=("/win",)),
        "/win": Fetched("/win", FRAME, children=("/a", "/b", "/c")),
        "/a": Fetched("/a", PUSH_BUTTON),
        "/b": Fetched("/b", PUSH_BUTTON),
        "/c": Fetched("/c", PUSH_BUTTON),
    }
    model.apply(fetched, root="/app")
    for _ in range(3):
        model.mark_extents_under("/app")
    # Each path once, however often its window moves, and never more than the mirror holds.
    assert set(model.extents_due) == set(model.ids)
    assert len(model.extents_due) <= 5
