"""The bridge's sans-I/O handling of AT-SPI events that carry their change, and of the cache's
answer (``Cache.GetItems``) as a tree's structure."""

from __future__ import annotations

import dataclasses

import pytest

from kiki_a11y_server.atspi import roles
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
    model.mark_subtree("/win", "bounds")
    assert model.take_dirty() == {"/win": {"bounds"}, "/b": {"bounds"}}
    # A moved button's new extents (what Calls.refresh asks for "bounds") become its bounds.
    moved = dataclasses.replace(fetched["/b"], extents=(5, 5, 2, 2))
    (node,) = model.apply({"/b": moved}).nodes
    assert node.bounds == (5, 5, 2, 2)
