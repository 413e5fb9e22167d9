"""The bridge's sans-I/O core: role and state tables, the mirror's updates, action plans.

The mirror's updates are applied to the a11y-server's own tree (``kiki_a11y_server.tree``):
every update the bridge would publish must pass the server's rules and leave the server's
tree equal to the app's, also over random sequences of AT-SPI changes.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiki_a11y_server.atspi import roles
from kiki_a11y_server.atspi.actions import plan
from kiki_a11y_server.atspi.calls import AtspiError
from kiki_a11y_server.atspi.model import AppModel, Fetched
from kiki_a11y_server.atspi.walk import walk
from kiki_a11y_server.tree import Tree
from libkiki.a11y import wire
from libkiki.errors import InvalidParams, KikiError, NotFound

pytestmark = pytest.mark.unit

R, S, A = wire.ROLES, wire.STATES, wire.ACTIONS
PUSH_BUTTON = roles.ATSPI_ROLES.index("push button")
FRAME = roles.ATSPI_ROLES.index("frame")
ENTRY = roles.ATSPI_ROLES.index("entry")
SHOWN = ((1 << 8) | (1 << 24) | (1 << 25) | (1 << 30), 0)  # enabled sensitive showing visible


def states(*names: str) -> tuple[int, int]:
    bits = 0
    for name in names:
        bits |= 1 << roles.ATSPI_STATE_BITS[name]
    return (bits & 0xFFFFFFFF, bits >> 32)


class World:
    """A fake app: path -> (name, children paths); fetch answers as AT-SPI would."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {"/r": "app"}
        self.children: dict[str, list[str]] = {"/r": []}

    def add(self, parent: str, path: str, name: str = "") -> None:
        self.names[path] = name or path
        self.children[path] = []
        self.children[parent].append(path)

    async def fetch(self, path: str) -> Fetched | KikiError:
        if path not in self.names:
            return AtspiError(f"{path}: UnknownObject")
        return Fetched(path, PUSH_BUTTON, self.names[path], children=tuple(self.children[path]))


def sync(model: AppModel, world: World, start: list[tuple[str, bool]], root: str = "") -> list[int]:
    fetched, _ = asyncio.run(walk(world.fetch, model, start, max_nodes=10_000, max_children=100))
    batch = model.apply(fetched, root=root)
    return [n.id for n in batch.nodes]


def server_view(tree: Tree) -> dict[str, list[str]]:
    out = {}
    for node in tree.nodes.values():
        out[node.name] = sorted(tree.nodes[c].name for c in node.children)
    return out


def world_view(world: World) -> dict[str, list[str]]:
    reachable: dict[str, list[str]] = {}
    stack = ["/r"]
    while stack:
        path = stack.pop()
        reachable[world.names[path]] = sorted(world.names[c] for c in world.children[path])
        stack.extend(world.children[path])
    return reachable


def publish(tree: Tree, model: AppModel, fetched_root: str = "") -> None:
    """What the bridge's publisher sends, through the server's own rules."""
    nodes = [model.entries[i].node for i in model.entries]
    tree.apply(wire.TreeUpdate(root_id=model.root_id, nodes=tuple(nodes)))


# -- tables ------------------------------------------------------------------------------------


def test_roles_map_to_kiki_and_unknown_keeps_the_atspi_name() -> None:
    assert roles.kiki_role(PUSH_BUTTON) == (R["button"], "push button")
    assert roles.kiki_role(roles.ATSPI_ROLES.index("check box"))[0] == R["checkBox"]
    assert roles.kiki_role(roles.ATSPI_ROLES.index("ruler")) == (R["unknown"], "ruler")
    assert roles.kiki_role(999) == (R["unknown"], "role 999")
    # Every Kiki role named in the table exists (a typo would map to unknown silently).
    assert set(roles.ROLE_MAP.values()) <= set(R)
    assert set(roles.STATE_MAP.values()) <= set(S)


def test_an_unmapped_role_is_unknown_with_atspi_s_name_for_it() -> None:
    ruler = roles.ATSPI_ROLES.index("ruler")
    assert roles.role_name(ruler) == "ruler"
    assert roles.role_name(999) == "role 999"
    assert roles.role_name(PUSH_BUTTON) == ""  # Kiki has the role
    assert roles.role_name(roles.ATSPI_ROLES.index("unknown")) == ""  # says nothing more
    model = AppModel()
    fetched = {
        "/r": Fetched("/r", FRAME, "app", children=("/q", "/b")),
        "/q": Fetched("/q", roles.ATSPI_ROLES.index("block quote")),
        "/b": Fetched("/b", PUSH_BUTTON, "OK"),
    }
    nodes = {n.name or model.entries[n.id].path: n for n in model.apply(fetched, root="/r").nodes}
    assert (nodes["/q"].role, nodes["/q"].role_name) == (R["unknown"], "block quote")
    assert (nodes["OK"].role, nodes["OK"].role_name) == (R["button"], "")
    # The server takes it as it is.
    tree = Tree(1, wire.App(1))
    publish(tree, model)
    assert tree.nodes[nodes["/q"].id].role_name == "block quote"


def test_states_map_and_derive() -> None:
    got = roles.kiki_states(roles.atspi_state_names(states("focused", "checked", "visible")))
    assert got == S["focused"] | S["checked"] | S["offscreen"] | S["disabled"]
    shown = roles.atspi_state_names(SHOWN)
    assert roles.kiki_states(shown) == 0
    assert roles.kiki_states(shown - {"visible"}) == S["hidden"]
    assert roles.kiki_states(shown | {"expandable"}) == S["collapsed"]
    assert roles.kiki_states(set()) == 0  # an application's root has no states at all
    assert roles.atspi_state_names((0, 1 << 20)) == {"state 52"}


def test_actions_from_interfaces_and_action_names() -> None:
    model = AppModel()
    entry = Fetched(
        "/r",
        ENTRY,
        "Name",
        states=states("editable", "focusable", "enabled", "visible", "showing"),
        interfaces=frozenset({"Accessible", "Component", "EditableText", "Text", "Action"}),
        actions=("activate",),
        value="x",
    )
    (node,) = model.apply({"/r": entry}, root="/r").nodes
    assert node.role == R["textField"]
    assert node.actions == (A["press"], A["focus"], A["setValue"])
    assert plan(model, node.id, A["press"], "")[0].what == "DoAction(0, 'activate')"
    (call,) = plan(model, node.id, A["setValue"], "Ada")
    assert (call.interface, call.member, call.body) == (
        "org.a11y.atspi.EditableText",
        "SetTextContents",
        ("Ada",),
    )
    assert plan(model, node.id, A["focus"], "")[0].member == "GrabFocus"
    with pytest.raises(InvalidParams):
        plan(model, node.id, A["expand"], "")
    with pytest.raises(NotFound):
        plan(model, 99, A["press"], "")


def test_value_actions_step_by_the_minimum_increment() -> None:
    model = AppModel()
    slider = Fetched(
        "/r",
        roles.ATSPI_ROLES.index("slider"),
        interfaces=frozenset({"Value", "Component"}),
        numeric=50.0,
        increment=5.0,
        value="50",
    )
    (node,) = model.apply({"/r": slider}, root="/r").nodes
    assert plan(model, node.id, A["increment"], "")[0].body[2] == 55.0
    assert plan(model, node.id, A["decrement"], "")[0].body[2] == 45.0
    assert plan(model, node.id, A["setValue"], "7.5")[0].body[2] == 7.5
    with pytest.raises(InvalidParams):
        plan(model, node.id, A["setValue"], "lots")


def test_an_editable_text_without_editabletext_is_typed_into() -> None:
    model = AppModel()
    field = Fetched(
        "/r",
        ENTRY,
        states=states("editable", "focusable", "enabled", "visible", "showing"),
        interfaces=frozenset({"Component", "Text", "Action"}),
        actions=("activate",),
        value="old",
    )
    (node,) = model.apply({"/r": field}, root="/r").nodes
    assert A["setValue"] in node.actions
    focus, select, typing = plan(model, node.id, A["setValue"], "Ada")
    assert (focus.member, select.member, select.body) == ("GrabFocus", "AddSelection", (0, 3))
    assert (typing.destination, typing.member, typing.body) == (
        "org.a11y.atspi.Registry",
        "GenerateKeyboardEvent",
        (0, "Ada", 4),
    )
    assert plan(model, node.id, A["setValue"], "")[-1].body == (0xFFFF, "", 3)  # Delete


# -- updates -----------------------------------------------------------------------------------


def test_initial_walk_then_changes_pass_the_servers_rules() -> None:
    world = World()
    world.add("/r", "/a")
    world.add("/a", "/a1")
    world.add("/r", "/b")
    model = AppModel()
    tree = Tree(1, wire.App(1))
    fetched, _ = asyncio.run(
        walk(world.fetch, model, [("/r", True)], max_nodes=99, max_children=99)
    )
    batch = model.apply(fetched, root="/r")
    tree.apply(wire.TreeUpdate(root_id=model.root_id, nodes=tuple(batch.nodes)))
    assert server_view(tree) == world_view(world)

    # A new subtree under /b, /a1 renamed, /a dropped with its child.
    world.add("/b", "/c")
    world.add("/c", "/c1")
    world.names["/b"] = "bee"
    world.children["/r"].remove("/a")
    del world.names["/a"]
    for path in ("/b", "/r", "/a1"):
        model.mark(path)
    fetched, failed = asyncio.run(
        walk(
            world.fetch,
            model,
            [(p, False) for p in model.take_dirty()],
            max_nodes=99,
            max_children=99,
        )
    )
    batch = model.apply(fetched)
    assert failed == []
    tree.apply(wire.TreeUpdate(nodes=tuple(batch.nodes)))
    assert server_view(tree) == world_view(world)
    assert len(batch.removed) == 2


def test_an_unchanged_node_is_not_sent_and_unknown_paths_are_not_marked() -> None:
    world = World()
    world.add("/r", "/a")
    model = AppModel()
    sync(model, world, [("/r", True)], root="/r")
    assert model.mark("/nowhere") is False
    assert model.mark("/a")
    assert sync(model, world, [(p, False) for p in model.take_dirty()]) == []


def test_a_moved_node_gets_a_new_id_and_a_cycle_is_cut() -> None:
    world = World()
    world.add("/r", "/a")
    world.add("/r", "/b")
    world.add("/a", "/x")
    model = AppModel()
    tree = Tree(1, wire.App(1))
    sync(model, world, [("/r", True)], root="/r")
    publish(tree, model)
    old_x = model.ids["/x"]
    world.children["/a"].remove("/x")
    world.children["/b"].append("/x")
    fetched, _ = asyncio.run(
        walk(world.fetch, model, [("/a", False), ("/b", False)], max_nodes=99, max_children=99)
    )
    batch = model.apply(fetched)
    tree.apply(wire.TreeUpdate(nodes=tuple(batch.nodes)))
    assert model.ids["/x"] != old_x
    assert server_view(tree) == world_view(world)
    # A child listing its own ancestor: the cycle is cut, nothing changes.
    world.children["/x"].append("/r")
    model.mark("/x")
    fetched, _ = asyncio.run(
        walk(world.fetch, model, [("/x", False)], max_nodes=99, max_children=99)
    )
    assert model.apply(fetched).nodes == []


def test_bounds_nodes_children_and_dirty_marks() -> None:
    world = World()
    for i in range(50):
        world.add("/r", f"/n{i}")
    model = AppModel(max_nodes=10, max_children=20, max_dirty=3)
    sync(model, world, [("/r", True)], root="/r")
    assert len(model.entries) == 10
    for path in list(model.ids)[:3]:
        model.mark(path)
    assert not model.resync
    model.mark(list(model.ids)[4])
    assert model.resync  # a storm past the bound: walk the app again instead


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(1, 25))
def test_random_changes_keep_the_server_equal_to_the_app(rng: random.Random, steps: int) -> None:
    world = World()
    model = AppModel()
    tree = Tree(1, wire.App(1))
    counter = 0
    for _ in range(5):
        counter += 1
        world.add(rng.choice(list(world.names)), f"/p{counter}")
    sync(model, world, [("/r", True)], root="/r")
    publish(tree, model)
    for _ in range(steps):
        paths = list(world_view_paths(world))
        op = rng.randrange(4)
        dirty: set[str] = set()
        if op == 0:  # a new child
            counter += 1
            parent = rng.choice(paths)
            world.add(parent, f"/p{counter}")
            dirty.add(parent)
        elif op == 1 and len(paths) > 1:  # a subtree removed
            victim = rng.choice(paths[1:])
            parent = next(p for p, c in world.children.items() if victim in c)
            world.children[parent].remove(victim)
            dirty.add(parent)
        elif op == 2:  # renamed
            victim = rng.choice(paths)
            counter += 1
            world.names[victim] = f"renamed{counter}"
            dirty.add(victim)
        elif len(paths) > 2:  # moved, if that makes no cycle
            victim = rng.choice(paths[1:])
            target = rng.choice(paths)
            if victim == target or target in subtree(world, victim):
                continue
            parent = next(p for p, c in world.children.items() if victim in c)
            world.children[parent].remove(victim)
            world.children[target].append(victim)
            dirty |= {parent, target}
        for path in sorted(dirty, key=lambda _: rng.random()):
            model.mark(path)
        fetched, _ = asyncio.run(
            walk(
                world.fetch,
                model,
                [(p, False) for p in model.take_dirty()],
                max_nodes=999,
                max_children=999,
            )
        )
        batch = model.apply(fetched)
        if batch.nodes:  # the bridge publishes nothing when nothing changed
            tree.apply(wire.TreeUpdate(nodes=tuple(batch.nodes)))
        assert server_view(tree) == world_view(world)
        assert set(tree.nodes) == set(model.entries)


def world_view_paths(world: World) -> list[str]:
    out, stack = [], ["/r"]
    while stack:
        path = stack.pop()
        out.append(path)
        stack.extend(world.children[path])
    return out


def subtree(world: World, path: str) -> set[str]:
    out, stack = set(), [path]
    while stack:
        current = stack.pop()
        out.add(current)
        stack.extend(world.children[current])
    return out
