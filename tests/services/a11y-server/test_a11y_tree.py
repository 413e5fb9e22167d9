"""Update rules, the desktop's snapshots and subscriber queues, the text rendering."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiki_a11y_server.desktop import Desktop
from kiki_a11y_server.tree import Tree, TreeLimits
from kikitest.a11y_fixtures import A, R, S, big_tree, form_tree
from libkiki.a11y import wire
from libkiki.a11y.client import Mirror
from libkiki.a11y.render import render_text, tree_json
from libkiki.errors import InvalidParams

pytestmark = pytest.mark.unit

N = wire.Node


def tree_with_form() -> Tree:
    tree = Tree(3, wire.App(3, "org.example.Editor", 1, 0))
    tree.apply(wire.TreeUpdate(root_id=1, nodes=tuple(form_tree())))
    return tree


def state(tree: Tree) -> tuple[object, ...]:
    return (
        dict(tree.nodes),
        dict(tree.parent),
        dict(tree.depth),
        tree.root,
        tree.seq,
        {k: c.data for k, c in tree.chunks.items()},
    )


def check_consistent(tree: Tree) -> None:
    """The structure is one tree: every node reached once from the root, parents agree."""
    seen = set()
    stack = [(tree.root, 0, 0)]
    while stack:
        node_id, parent, depth = stack.pop()
        assert node_id not in seen
        seen.add(node_id)
        assert tree.parent.get(node_id, 0) == parent
        assert tree.depth[node_id] == depth
        stack.extend((c, node_id, depth + 1) for c in tree.nodes[node_id].children)
    assert seen == set(tree.nodes) == set(tree.chunks)


def test_first_update_needs_a_root_and_builds_the_tree() -> None:
    tree = Tree(1, wire.App(1))
    with pytest.raises(InvalidParams, match="must name its root_id"):
        tree.apply(wire.TreeUpdate(nodes=(N(1),)))
    change = tree.apply(wire.TreeUpdate(root_id=1, nodes=tuple(form_tree())))
    assert (change.seq, change.base_seq, change.root_id) == (1, 0, 1)
    assert all(n.tree_id == 1 for n in tree.nodes.values()), "the server stamps the owner"
    check_consistent(tree)


BAD_UPDATES = [
    ("unknown child", (N(2, R["form"], children=(3, 4, 99)),), 0, "neither in the tree"),
    ("cycle", (N(5, R["button"], children=(1,)),), 0, "cycle"),
    ("self cycle", (N(5, R["button"], children=(5,)),), 0, "cycle"),
    (
        "two parents",
        (N(5, children=(7,)), N(6, children=(7,)), N(7)),
        0,
        "two parents",
    ),
    ("reparent", (N(2, R["form"], children=(3, 4, 5)),), 0, "reparenting needs"),
    ("orphan", (N(8),), 0, "no node lists it"),
    ("new nodes in a loop", (N(7, children=(8,)), N(8, children=(7,))), 0, "form a cycle"),
    (
        "a loop below a new node",
        (N(5, children=(7,)), N(7, children=(8,)), N(8, children=(7,))),
        0,
        "two parents",
    ),
    ("duplicate id", (N(5), N(5)), 0, "twice in the update"),
    ("child listed twice", (N(4, children=(5, 5, 6)),), 0, "twice"),
    ("id zero", (N(0),), 0, "reserved"),
    ("dropped but updated", (N(4, children=(5,)), N(6, R["button"], "x")), 0, "dropped it"),
    ("clear an unknown node", (N(2),), 42, "not in the tree"),
    ("clear without the node", (N(3),), 2, "must be in the update"),
    ("root as a child", (N(6, children=(1,)),), 0, "cycle"),
    ("empty", (), 0, "changes nothing"),
    ("role name of a known role", (N(6, R["button"], role_name="ruler"),), 0, "not unknown"),
    ("role name too long", (N(6, role_name="r" * 65),), 0, "longer than 64 characters"),
    ("role name forging a ref", (N(6, role_name='x) "Pay" [1:8] (press'),), 0, "may hold only"),
    ("role name with an escape", (N(6, role_name="\x1b[2Jred"),), 0, "may hold only"),
    ("role name in capitals", (N(6, role_name="Ruler"),), 0, "may hold only"),
]


@pytest.mark.parametrize(
    ("nodes", "clear", "error"), [b[1:] for b in BAD_UPDATES], ids=[b[0] for b in BAD_UPDATES]
)
def test_a_rejected_update_changes_nothing(
    nodes: tuple[wire.Node, ...], clear: int, error: str
) -> None:
    tree = tree_with_form()
    before = state(tree)
    with pytest.raises(InvalidParams, match=error):
        tree.apply(wire.TreeUpdate(node_id_to_clear=clear, nodes=nodes))
    assert state(tree) == before


def test_removing_children_removes_subtrees() -> None:
    tree = tree_with_form()
    change = tree.apply(wire.TreeUpdate(nodes=(N(2, R["form"], "Form", children=(3,)),)))
    assert sorted(change.removed) == [4, 5, 6]
    assert set(tree.nodes) == {1, 2, 3}
    check_consistent(tree)


def test_reparenting_after_clearing_the_old_parent() -> None:
    tree = tree_with_form()
    # Move Save (5) from the wrapper (4) to the form (2): clear 4, re-create 5 under 2.
    change = tree.apply(
        wire.TreeUpdate(
            node_id_to_clear=2,
            nodes=(
                N(2, R["form"], "Form", children=(3, 5, 4)),
                N(3, R["textField"], "Title"),
                N(5, R["button"], "Save"),
                N(4, R["generic"], children=(6,)),
                N(6, R["button"], "Cancel"),
            ),
        )
    )
    assert tree.parent[5] == 2
    assert tree.depth[5] == 2
    assert change.seq == 2
    check_consistent(tree)


def test_a_new_root_replaces_the_tree() -> None:
    tree = tree_with_form()
    change = tree.apply(wire.TreeUpdate(root_id=10, nodes=(N(10, children=(11,)), N(11))))
    assert change.root_id == 10
    assert set(tree.nodes) == {10, 11}
    assert sorted(change.removed) == [1, 2, 3, 4, 5, 6]
    check_consistent(tree)


def test_depth_and_size_limits() -> None:
    tree = Tree(1, wire.App(1), TreeLimits(max_nodes=5, max_depth=3))
    chain = (*(N(i, children=(i + 1,)) for i in range(1, 5)), N(5))
    with pytest.raises(InvalidParams, match="deeper than 3"):
        tree.apply(wire.TreeUpdate(root_id=1, nodes=chain))
    tree.apply(wire.TreeUpdate(root_id=1, nodes=(N(1, children=(2, 3, 4)), N(2), N(3), N(4))))
    with pytest.raises(InvalidParams, match="more than 5 nodes"):
        tree.apply(wire.TreeUpdate(nodes=(N(4, children=(5, 6)), N(5), N(6))))


def test_random_update_sequences_keep_one_consistent_tree() -> None:
    import random

    rng = random.Random(5)
    tree = Tree(1, wire.App(1))
    tree.apply(wire.TreeUpdate(root_id=1, nodes=tuple(big_tree(200))))
    next_id = 1000
    for _ in range(300):
        ids = list(tree.nodes)
        parent = rng.choice(ids)
        node = tree.nodes[parent]
        kids = list(node.children)
        new: list[wire.Node] = []
        if kids and rng.random() < 0.4:
            kids.pop(rng.randrange(len(kids)))
        else:
            kids.append(next_id)
            new.append(N(next_id, R["button"], f"n{next_id}"))
            next_id += 1
        if rng.random() < 0.2:  # sometimes break a rule on purpose
            kids.append(rng.choice(ids))
        before = state(tree)
        try:
            tree.apply(wire.TreeUpdate(nodes=(node._replace(children=tuple(kids)), *new)))
        except InvalidParams:
            assert state(tree) == before
        check_consistent(tree)


# -- desktop ---------------------------------------------------------------------------------


def mirror_of(desktop: Desktop, frames: list[bytes], mirror: Mirror | None = None) -> Mirror:
    mirror = mirror or Mirror()
    for frame in frames:
        message = wire.decode(frame)
        if isinstance(message, wire.Snapshot):
            mirror.load(message)
        elif isinstance(message, wire.TreeUpdate):
            assert mirror.apply(message), "updates arrive in sequence"
        elif isinstance(message, wire.TreeGone):
            mirror.remove(message.tree_id)
    return mirror


def test_subscriber_gets_a_snapshot_then_updates_that_keep_its_mirror_equal() -> None:
    desktop = Desktop()
    tree = desktop.new_tree(wire.App(0, "a"))
    desktop.publish(tree, wire.TreeUpdate(root_id=1, nodes=tuple(form_tree())))
    sub = desktop.subscribe(1, wire.Subscribe(5))
    mirror = mirror_of(desktop, desktop.take(sub))
    desktop.publish(tree, wire.TreeUpdate(nodes=(N(3, R["textField"], "Title", value="v2"),)))
    desktop.publish(tree, wire.TreeUpdate(nodes=(N(4, R["generic"], children=(5,)),)))
    other = desktop.new_tree(wire.App(0, "b"))
    desktop.publish(other, wire.TreeUpdate(root_id=7, nodes=(N(7),)))
    frames = desktop.take(sub)
    assert len(frames) == 2, "two updates of one tree were coalesced into one frame"
    mirror_of(desktop, frames, mirror)
    assert {t: m.nodes for t, m in mirror.trees.items()} == {
        t.tree_id: t.nodes for t in desktop.trees.values()
    }
    desktop.remove_tree(other.tree_id)
    mirror_of(desktop, desktop.take(sub), mirror)
    assert set(mirror.trees) == {tree.tree_id}


def test_snapshots_come_from_kept_buffers() -> None:
    desktop = Desktop()
    tree = desktop.new_tree(wire.App(0, "a"))
    desktop.publish(tree, wire.TreeUpdate(root_id=1, nodes=tuple(big_tree(300))))
    answers = [wire.decode(desktop.snapshot(rid)) for rid in (5, 6)]
    kept = desktop._snapshot
    assert kept is not None
    assert [a.request_id for a in answers] == [5, 6]
    assert answers[0] == dataclasses.replace(answers[1], request_id=5)
    desktop.snapshot(7)
    assert desktop._snapshot is kept, "no rebuild while nothing changed"
    chunk = tree.full_chunk()
    assert tree.full_chunk() is chunk
    desktop.publish(tree, wire.TreeUpdate(nodes=(N(300, R["label"], "changed"),)))
    decoded = wire.decode(desktop.snapshot(8))
    assert desktop._snapshot is not kept
    assert tree.full_chunk() is not chunk
    assert isinstance(decoded, wire.Snapshot)
    assert {n.id: n for n in decoded.trees[0].nodes} == tree.nodes


def test_a_slow_subscriber_is_bounded_then_told_to_resync() -> None:
    desktop = Desktop(max_pending_bytes=4096)
    tree = desktop.new_tree(wire.App(0, "a"))
    desktop.publish(tree, wire.TreeUpdate(root_id=1, nodes=tuple(big_tree(100))))
    sub = desktop.subscribe(1, wire.Subscribe(0))
    desktop.take(sub)
    # The same node over and over: coalesced, the backlog does not grow.
    for k in range(1000):
        desktop.publish(tree, wire.TreeUpdate(nodes=(N(50, R["label"], f"v{k}"),)))
        assert sub.pending_bytes < 4096
    assert not sub.stale
    # Many different nodes: past the bound the backlog is dropped and a Resync is queued.
    for i in range(2, 100):
        desktop.publish(tree, wire.TreeUpdate(nodes=(tree.nodes[i]._replace(name="x" * 50),)))
    assert desktop.subscribers[1].stale  # (not `sub.stale`: mypy narrowed it above)
    assert sub.pending_bytes == 0
    frames = desktop.take(sub)
    assert [type(wire.decode(f)) for f in frames] == [wire.Resync]
    desktop.publish(tree, wire.TreeUpdate(nodes=(N(50, R["label"], "ignored while stale"),)))
    assert desktop.take(sub) == []
    desktop.resync(1, 9)
    mirror = mirror_of(desktop, desktop.take(sub))
    assert mirror.trees[tree.tree_id].nodes == tree.nodes


def test_filters_by_app_role_subtree_and_depth() -> None:
    desktop = Desktop()
    a = desktop.new_tree(wire.App(0, "a"))
    b = desktop.new_tree(wire.App(0, "b"))
    desktop.publish(a, wire.TreeUpdate(root_id=1, nodes=tuple(form_tree())))
    desktop.publish(b, wire.TreeUpdate(root_id=1, nodes=tuple(form_tree())))
    by_app = desktop.subscribe(1, wire.Subscribe(0, apps=("b",)))
    buttons = desktop.subscribe(2, wire.Subscribe(0, roles=(R["button"],)))
    shallow = desktop.subscribe(3, wire.Subscribe(0, tree_id=a.tree_id, root_id=2, max_depth=1))
    assert set(mirror_of(desktop, desktop.take(by_app)).trees) == {b.tree_id}
    m = mirror_of(desktop, desktop.take(buttons))
    assert {n.name for t in m for n in t.nodes.values()} == {"Save", "Cancel"}
    m2 = mirror_of(desktop, desktop.take(shallow))
    assert set(m2.trees[a.tree_id].nodes) == {2, 3, 4}
    # A button renamed into a label leaves the buttons view.
    desktop.publish(a, wire.TreeUpdate(nodes=(N(5, R["label"], "Saved"),)))
    mirror_of(desktop, desktop.take(buttons), m)
    assert {n.name for n in m.trees[a.tree_id].nodes.values()} == {"Cancel"}


def test_query_by_role_name_text_and_state() -> None:
    desktop = Desktop()
    tree = desktop.new_tree(wire.App(0, "a"))
    desktop.publish(tree, wire.TreeUpdate(root_id=1, nodes=tuple(form_tree())))
    chunks, total = desktop.query(wire.Query(0, role=R["button"], name="sav"))
    assert total == 1
    found = wire.decode(wire.encode_raw(1, wire.RawQueryResult(chunks, total)))
    assert isinstance(found, wire.QueryResult)
    assert [n.name for n in found.nodes] == ["Save"]
    assert desktop.query(wire.Query(0, text="DRAFT"))[1] == 1
    assert desktop.query(wire.Query(0, states=S["editable"]))[1] == 1
    assert desktop.query(wire.Query(0, app_id="nobody"))[1] == 0


# -- text rendering ----------------------------------------------------------------------------


def test_text_outline_prunes_wrappers_and_hidden_nodes() -> None:
    tree = tree_with_form()
    tree.apply(wire.TreeUpdate(nodes=(N(6, R["button"], "Cancel", states=S["hidden"]),)))
    text = render_text([tree]).text
    assert text.splitlines() == [
        "app org.example.Editor pid 1 (tree 3)",
        '- window "Editor" [3:1]',
        '  - form "Form" [3:2]',
        '    - textField "Title" [3:3] value="draft" (setValue)',
        '    - button "Save" [3:5] (press)',
    ]


def test_an_unknown_roles_own_name_is_kept_and_shown() -> None:
    tree = tree_with_form()
    tree.apply(wire.TreeUpdate(nodes=(N(6, role_name="ruler"),)))
    assert tree.nodes[6].role_name == "ruler"
    # Named by its publisher, it is no empty wrapper: the outline shows it.
    assert render_text([tree]).text.splitlines()[-1] == "    - unknown(ruler) [3:6]"
    (doc,) = (n for n in tree_json(tree)["nodes"] if n["id"] == 6)
    assert (doc["role"], doc["roleName"]) == ("unknown", "ruler")
    assert "roleName" not in tree_json(tree)["nodes"][0]
    tree.apply(wire.TreeUpdate(nodes=(N(6),)))
    assert "[3:6]" not in render_text([tree]).text


def test_text_budget_truncates_and_says_so() -> None:
    tree = Tree(1, wire.App(1, "big"))
    tree.apply(wire.TreeUpdate(root_id=1, nodes=tuple(big_tree(1000))))
    by_nodes = render_text([tree], max_nodes=50)
    assert by_nodes.truncated
    assert by_nodes.nodes == 50
    assert "50 of 1000 nodes shown" in by_nodes.text
    by_chars = render_text([tree], max_chars=2000)
    assert by_chars.truncated
    assert len(by_chars.text) < 2200
    full = render_text([tree], max_nodes=10_000, max_chars=10**7)
    assert not full.truncated
    assert full.nodes == 1000, "named groups are not wrappers"
    unnamed = tree.nodes[10]._replace(name="", description="", value="", actions=())
    tree.apply(wire.TreeUpdate(nodes=(unnamed._replace(role=R["group"]),)))
    assert render_text([tree], max_nodes=10_000, max_chars=10**7).nodes == 999
    assert A["press"] in tree.nodes[5].actions


# -- the incremental checks against a brute-force model --------------------------------------


def brute_force(
    old: dict[int, wire.Node], root: int, update: wire.TreeUpdate, limits: TreeLimits
) -> dict[int, wire.Node] | None:
    """The whole new tree rebuilt and walked from the root; None when a rule is broken."""
    old_parent = {c: p for p, n in old.items() for c in n.children}
    ids = [n.id for n in update.nodes]
    if 0 in ids or len(set(ids)) != len(ids):
        return None
    if not update.nodes and not update.node_id_to_clear:
        return None
    replace = bool(update.root_id and update.root_id != root)
    if not replace and not root:
        return None
    new = {} if replace else dict(old)
    live = set() if replace else set(old)
    clear = 0 if replace else update.node_id_to_clear
    if clear:
        if clear not in old or clear not in ids:
            return None
        stack = list(old[clear].children)
        while stack:
            c = stack.pop()
            live.discard(c)
            new.pop(c, None)
            stack.extend(old[c].children)
    new_root = update.root_id if replace else root
    for n in update.nodes:
        new[n.id] = n
    seen: dict[int, int] = {}  # id -> parent
    depth = {new_root: 0}
    stack = [new_root] if new_root in new else []
    if not stack:
        return None
    seen[new_root] = 0
    while stack:
        p = stack.pop()
        if len(new[p].children) != len(set(new[p].children)):
            return None
        for c in new[p].children:
            if c not in new or c in seen:
                return None  # unknown child, two parents or a cycle
            seen[c] = p
            depth[c] = depth[p] + 1
            stack.append(c)
    for c, p in seen.items():
        if c in live and old_parent.get(c, 0) != p:
            return None  # reparented without a clear
    if any(i not in seen for i in ids):
        return None  # an orphan, or a node its parent dropped
    if max(depth.values()) > limits.max_depth or len(seen) > limits.max_nodes:
        return None
    return {i: new[i] for i in seen}


@st.composite
def tree_and_update(draw: st.DrawFn) -> tuple[list[wire.Node], wire.TreeUpdate]:
    """Mostly plausible updates (drop children, add new ones, move after a clear, replace the
    root), with a rule broken now and then (a stray id in a child list, a missing new node)."""
    size = draw(st.integers(1, 25))
    base = big_tree(size, fanout=3)
    existing = list(range(1, size + 1))
    fresh = iter(range(100, 200))
    nodes: dict[int, wire.Node] = {}
    clear = 0
    root_id = 0
    mode = draw(st.sampled_from(["edit", "edit", "edit", "clear", "root"]))
    if mode == "root":
        root_id = draw(st.sampled_from([1, 200]))
        fresh_kids = (next(fresh), next(fresh))
        nodes[root_id] = N(root_id, R["window"], children=fresh_kids)
        nodes.update({k: N(k, R["button"]) for k in fresh_kids})
    else:
        if mode == "clear":
            clear = draw(st.sampled_from(existing))
            kids = draw(st.lists(st.sampled_from(existing), max_size=2, unique=True))
            kids = [k for k in kids if tree_is_above(base, clear, k) and k != clear]
            nodes[clear] = N(clear, R["group"], children=tuple(kids))
            nodes.update({k: N(k, R["label"]) for k in kids})
        for node_id in draw(st.lists(st.sampled_from(existing), max_size=4, unique=True)):
            if node_id in nodes:
                continue
            old = list(base[node_id - 1].children)
            kept = [c for c in old if draw(st.booleans())]
            added = [next(fresh) for _ in range(draw(st.integers(0, 2)))]
            nodes[node_id] = N(node_id, R["group"], f"n{node_id}", children=(*kept, *added))
            nodes.update({k: N(k, R["button"], f"new {k}") for k in added})
    if draw(st.integers(0, 3)) == 0:  # break something
        victim = draw(st.sampled_from(sorted(nodes) or [1]))
        stray = draw(st.sampled_from([*existing, 150, victim]))
        node = nodes.get(victim, N(victim))
        nodes[victim] = node._replace(children=(*node.children, stray))
    if nodes and draw(st.integers(0, 5)) == 0:
        del nodes[draw(st.sampled_from(sorted(nodes)))]
    update = wire.TreeUpdate(node_id_to_clear=clear, root_id=root_id, nodes=tuple(nodes.values()))
    return base, update


def tree_is_above(base: list[wire.Node], top: int, node_id: int) -> bool:
    """In ``big_tree(fanout=3)`` node i's parent is (i - 2) // 3 + 1."""
    while node_id > 1 and node_id != top:
        node_id = (node_id - 2) // 3 + 1
    return node_id == top


@settings(max_examples=600, deadline=None)
@given(tree_and_update())
def test_incremental_checks_agree_with_rebuilding_the_tree(
    case: tuple[list[wire.Node], wire.TreeUpdate],
) -> None:
    base, update = case
    limits = TreeLimits(max_nodes=28, max_depth=6)
    tree = Tree(1, wire.App(1), limits)
    tree.apply(wire.TreeUpdate(root_id=1, nodes=tuple(base)))
    old = {i: n._replace(tree_id=0) for i, n in tree.nodes.items()}
    expected = brute_force(old, tree.root, update, limits)
    try:
        tree.apply(update)
    except InvalidParams:
        assert expected is None, "refused an update the rules allow"
        return
    assert expected is not None, "accepted an update that breaks a rule"
    assert {i: n._replace(tree_id=0) for i, n in tree.nodes.items()} == expected
    check_consistent(tree)


# -- review fixes: bounded backlog of short-lived apps, resync notices, filtered views -----------


def test_short_lived_apps_keep_a_stalled_subscribers_backlog_bounded() -> None:
    desktop = Desktop(max_pending_bytes=1 << 20, max_pending_trees=8)
    sub = desktop.subscribe(1, wire.Subscribe(0))
    desktop.take(sub)
    # Apps that come and go while the subscriber reads nothing: it never heard of them, so
    # nothing at all is queued for them (not a TreeGone each).
    for _ in range(1000):
        app = desktop.new_tree(wire.App(0, "brief"))
        desktop.publish(app, wire.TreeUpdate(root_id=1, nodes=(N(1, R["window"], "hi"),)))
        desktop.remove_tree(app.tree_id)
        assert len(sub.pending) <= 1
    assert sub.pending == {}
    assert sub.pending_bytes == 0
    assert not sub.stale
    # Apps it did hear of, leaving: each one a charged entry, and past the bound a resync.
    seen = []
    for _ in range(20):
        app = desktop.new_tree(wire.App(0, "seen"))
        desktop.publish(app, wire.TreeUpdate(root_id=1, nodes=(N(1, R["window"], "hi"),)))
        seen.append(app.tree_id)
        assert len(desktop.take(sub)) == 1  # read while it still reads
    for tree_id in seen:
        desktop.remove_tree(tree_id)
        assert len(sub.pending) <= 8
        assert sub.pending_bytes == sum(map(desktop._cost, sub.pending.values()))
    assert desktop.subscribers[1].stale
    assert sub.resyncs == 1
    (notice,) = (wire.decode(f) for f in desktop.take(sub))
    assert isinstance(notice, wire.Resync)
    assert "more than 8 trees" in notice.reason
    desktop.resync(1, 3)
    mirror = mirror_of(desktop, desktop.take(sub))
    assert mirror.trees == {}


def test_a_tree_gone_replaces_that_trees_pending_update() -> None:
    desktop = Desktop()
    sub = desktop.subscribe(1, wire.Subscribe(0))
    tree = desktop.new_tree(wire.App(0, "a"))
    desktop.publish(tree, wire.TreeUpdate(root_id=1, nodes=tuple(form_tree())))
    mirror = mirror_of(desktop, desktop.take(sub))
    desktop.publish(tree, wire.TreeUpdate(nodes=(N(5, R["button"], "x" * 500),)))
    desktop.remove_tree(tree.tree_id)
    assert sub.pending_bytes == desktop._cost(sub.pending[tree.tree_id]) < 500
    frames = desktop.take(sub)
    assert [type(wire.decode(f)) for f in frames] == [wire.TreeGone]
    mirror_of(desktop, frames, mirror)
    assert mirror.trees == {}


def test_a_resync_replaces_the_pending_notice_with_the_snapshot() -> None:
    desktop = Desktop(max_pending_bytes=4096)
    tree = desktop.new_tree(wire.App(0, "a"))
    desktop.publish(tree, wire.TreeUpdate(root_id=1, nodes=tuple(big_tree(100))))
    sub = desktop.subscribe(1, wire.Subscribe(0))
    desktop.take(sub)
    for i in range(2, 100):
        desktop.publish(tree, wire.TreeUpdate(nodes=(tree.nodes[i]._replace(name="x" * 50),)))
    assert desktop.subscribers[1].stale
    # The subscriber asks before it has read the notice: it gets the snapshot only.
    desktop.resync(1, 9)
    frames = [wire.decode(f) for f in desktop.take(sub)]
    assert [(type(f), f.request_id) for f in frames] == [(wire.Snapshot, 9)]


def test_query_limit_is_capped() -> None:
    from kiki_a11y_server.desktop import MAX_QUERY_LIMIT

    desktop = Desktop()
    tree = desktop.new_tree(wire.App(0, "a"))
    desktop.publish(tree, wire.TreeUpdate(root_id=1, nodes=tuple(big_tree(MAX_QUERY_LIMIT + 500))))
    found, total = desktop.query(wire.Query(0, limit=2**31))
    assert (len(found), total) == (MAX_QUERY_LIMIT, MAX_QUERY_LIMIT + 500)
    assert len(desktop.query(wire.Query(0, limit=7))[0]) == 7


def test_filtered_views_render_their_nodes() -> None:
    desktop = Desktop()
    a = desktop.new_tree(wire.App(0, "a"))
    b = desktop.new_tree(wire.App(0, "b"))
    desktop.publish(a, wire.TreeUpdate(root_id=1, nodes=tuple(form_tree())))
    desktop.publish(b, wire.TreeUpdate(root_id=1, nodes=tuple(form_tree())))
    buttons = mirror_of(
        desktop, desktop.take(desktop.subscribe(1, wire.Subscribe(0, roles=(R["button"],))))
    )
    text = render_text(buttons).text
    for t in (a, b):
        assert f'- button "Save" [{t.tree_id}:5]' in text
        assert f'- button "Cancel" [{t.tree_id}:6]' in text
    form = mirror_of(
        desktop, desktop.take(desktop.subscribe(2, wire.Subscribe(0, tree_id=b.tree_id, root_id=2)))
    )
    assert form.trees[b.tree_id].root == 2
    text = render_text(form).text
    assert f'- form "Form" [{b.tree_id}:2]' in text
    assert f'  - button "Save" [{b.tree_id}:5]' in text
    assert "Editor" not in text
    assert [n["id"] for n in tree_json(form.trees[b.tree_id])["nodes"]] == [2, 3, 4, 5, 6]


def test_a_subtree_is_the_pair_of_tree_and_root() -> None:
    desktop = Desktop()
    a = desktop.new_tree(wire.App(0, "a"))
    desktop.publish(a, wire.TreeUpdate(root_id=1, nodes=tuple(form_tree())))
    # root_id without tree_id: whole trees (the schema's "0: whole trees").
    sub = desktop.subscribe(1, wire.Subscribe(0, root_id=4))
    assert not sub.filter.per_node
    mirror = mirror_of(desktop, desktop.take(sub))
    assert mirror.trees[a.tree_id].nodes == a.nodes
    assert mirror.trees[a.tree_id].root == 1
