"""One app's tree and the rules an update must follow (sans-I/O: no clock, no sockets).

Updates have Chromium's AXTreeUpdate semantics:

* ``node_id_to_clear``: that node's descendants are deleted before the update applies; the node
  stays and must itself be in the update (with its new children).
* ``root_id``: naming a root different from the current one replaces the whole tree; every node
  of the new tree must then be in the update. The first update of a tree must name its root.
* ``nodes``: each node listed replaces the node with that id. Children dropped from a node's
  list are deleted with their subtrees; a child added to a list must be a node new to the tree
  (or one re-created after a clear) and must be in the update.

:meth:`Tree.apply` checks everything before it changes anything, in time proportional to the
update (not to the tree): ids unique and non-zero, no unknown child, no node with two parents,
no cycle, no reparenting of a live node (clear its old parent first), no orphan, depth and size
within limits, a ``role_name`` only on an unknown role (and short). A rejected update raises
:class:`~libkiki.errors.InvalidParams` saying which rule broke and leaves the tree exactly as it
was.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from libkiki.a11y import wire
from libkiki.errors import InvalidParams
from libkiki.flatbuf import Chunk


@dataclass(frozen=True, slots=True)
class TreeLimits:
    max_nodes: int = 200_000
    max_depth: int = 512


@dataclass(slots=True)
class Change:
    """What an accepted update did, ready to be told to subscribers."""

    tree_id: int
    seq: int
    base_seq: int
    root_id: int  # non-zero when the root changed (a new tree, or a replaced one)
    upserted: list[wire.Node]
    removed: list[int]
    cause: int
    frame: bytes | None = None  # the unfiltered update message, encoded once on first use


def _reject(rule: str) -> InvalidParams:
    return InvalidParams(f"update rejected: {rule}", data={"rule": rule})


@dataclass(eq=False)
class Tree:
    tree_id: int
    app: wire.App
    limits: TreeLimits = field(default_factory=TreeLimits)
    nodes: dict[int, wire.Node] = field(default_factory=dict)
    chunks: dict[int, Chunk] = field(default_factory=dict)
    parent: dict[int, int] = field(default_factory=dict)
    depth: dict[int, int] = field(default_factory=dict)
    root: int = 0
    seq: int = 0
    _full: Chunk | None = None

    def __post_init__(self) -> None:
        self.app_chunk = wire.app_chunk(self.app)

    def rename(self, app: wire.App) -> None:
        """The tree is ``app``'s from now on (its nodes stay as they are)."""
        self.app = app._replace(tree_id=self.tree_id)
        self.app_chunk = wire.app_chunk(self.app)
        self._full = None

    # -- reading -------------------------------------------------------------------------------

    def descendants(self, node_id: int) -> Iterator[int]:
        """Every node below ``node_id`` (not itself), depth first."""
        stack = list(self.nodes[node_id].children)
        nodes = self.nodes
        while stack:
            n = stack.pop()
            yield n
            stack.extend(nodes[n].children)

    def is_ancestor(self, ancestor: int, node_id: int) -> bool:
        """True when ``ancestor`` is ``node_id`` or above it."""
        n = node_id
        while n:
            if n == ancestor:
                return True
            n = self.parent.get(n, 0)
        return False

    def full_chunk(self) -> Chunk:
        """The whole tree as one encoded TreeUpdate, kept until the tree next changes."""
        if self._full is None:
            self._full = wire.raw_tree_chunk(
                wire.RawTreeUpdate(
                    self.tree_id,
                    self.seq,
                    0,
                    0,
                    self.root,
                    list(self.chunks.values()),
                    (),
                    0,
                    self.app_chunk,
                )
            )
        return self._full

    # -- changing ------------------------------------------------------------------------------

    def apply(self, update: wire.TreeUpdate) -> Change:
        old = self.nodes
        changed: dict[int, wire.Node] = {}
        for n in update.nodes:
            if n.id == 0:
                raise _reject("node id 0 is reserved")
            if n.id in changed:
                raise _reject(f"node {n.id} appears twice in the update")
            if n.role_name:
                if n.role:
                    raise _reject(f"node {n.id} has a role_name but its role is not unknown")
                if len(n.role_name) > wire.MAX_ROLE_NAME:
                    raise _reject(
                        f"node {n.id}'s role_name is longer than {wire.MAX_ROLE_NAME} characters"
                    )
                if not wire.ROLE_NAME.fullmatch(n.role_name):
                    raise _reject(f"node {n.id}'s role_name may hold only a-z, 0-9, space, _ and -")
            changed[n.id] = n
        if not changed and not update.node_id_to_clear:
            raise _reject("the update changes nothing")

        root = self.root
        replace_all = bool(update.root_id and update.root_id != root)
        if replace_all:
            root = update.root_id
            if root not in changed:
                raise _reject(f"the new root {root} is not in the update")
        elif not root:
            raise _reject("the first update of a tree must name its root_id")

        clear = 0 if replace_all else update.node_id_to_clear
        cleared: set[int] = set()
        if clear:
            if clear not in old:
                raise _reject(f"node_id_to_clear {clear} is not in the tree")
            if clear not in changed:
                raise _reject(f"the cleared node {clear} must be in the update")
            cleared = set(self.descendants(clear))

        def live(i: int) -> bool:
            return not replace_all and i in old and i not in cleared

        new_parent: dict[int, int] = {}
        dropped: list[int] = []
        for p, n in changed.items():
            before = old[p].children if live(p) and p != clear else ()
            kept = set(before)
            seen: set[int] = set()
            for c in n.children:
                if c in seen:
                    raise _reject(f"node {p} lists child {c} twice")
                seen.add(c)
                if c in kept:
                    continue
                if live(c):
                    if self.is_ancestor(c, p):
                        raise _reject(f"making {c} a child of {p} would create a cycle")
                    raise _reject(
                        f"node {c} would move from parent {self.parent.get(c, 0)} to {p} "
                        "(reparenting needs node_id_to_clear on the old parent)"
                    )
                if c not in changed:
                    raise _reject(f"child {c} of node {p} is neither in the tree nor in the update")
                if c in new_parent:
                    raise _reject(f"node {c} would have two parents ({new_parent[c]} and {p})")
                new_parent[c] = p
            dropped.extend(c for c in before if c not in seen)

        # Every new node hangs below a live node (or is the root), with no cycle and in depth.
        depth_of: dict[int, int] = {}
        for i in changed:
            if live(i):
                continue
            if i == root:
                if i in new_parent:
                    raise _reject(f"the root {i} cannot also be a child of {new_parent[i]}")
                depth_of[i] = 0
                continue
            if i not in new_parent:
                raise _reject(f"node {i} is new but no node lists it as a child")
            path: list[int] = []
            on_path: set[int] = set()
            at = i
            while at not in depth_of and not live(at) and at != root:
                if at in on_path:
                    raise _reject(f"nodes {sorted(on_path)} form a cycle")
                path.append(at)
                on_path.add(at)
                if at not in new_parent:
                    raise _reject(f"node {at} is new but no node lists it as a child")
                at = new_parent[at]
            base = depth_of.get(at, 0 if at == root else self.depth.get(at, 0))
            for k, m in enumerate(reversed(path), start=1):
                depth_of[m] = base + k
            if depth_of[i] > self.limits.max_depth:
                raise _reject(f"node {i} would be deeper than {self.limits.max_depth} levels")

        removed: set[int] = set()
        stack = dropped
        while stack:
            r = stack.pop()
            if r in removed:
                continue
            removed.add(r)
            stack.extend(old[r].children)
        for i in changed:
            if live(i) and i in removed:
                raise _reject(f"node {i} is in the update but its parent dropped it")

        gone = set(old) if replace_all else removed | cleared
        new_count = sum(1 for i in changed if not live(i))
        if len(old) - len(gone) + new_count > self.limits.max_nodes:
            raise _reject(f"the tree would have more than {self.limits.max_nodes} nodes")

        # Everything checked: apply.
        for i in gone:
            del old[i]
            del self.chunks[i]
            self.parent.pop(i, None)
            self.depth.pop(i, None)
        upserted = []
        tree_id = self.tree_id
        for i, n in changed.items():
            if n.tree_id != tree_id:
                n = n._replace(tree_id=tree_id)
            old[i] = n
            self.chunks[i] = wire.node_chunk(n)
            upserted.append(n)
        for c, p in new_parent.items():
            self.parent[c] = p
        for i, d in depth_of.items():
            self.depth[i] = d
        if replace_all:
            self.parent[root] = 0
        self.root = root
        base_seq = self.seq
        self.seq += 1
        self._full = None
        return Change(
            tree_id,
            self.seq,
            base_seq,
            root if replace_all else 0,
            upserted,
            sorted(gone),
            update.cause,
        )
