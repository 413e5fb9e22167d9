"""The desktop-wide view: every app's tree, the subscribers and their queues (sans-I/O).

Snapshots are spliced from the encoded chunks each tree keeps per node (see
:mod:`libkiki.flatbuf`): an unfiltered snapshot is cached whole until some tree changes, and a
tree's part of it until that tree changes. A subscriber's pending updates are coalesced per tree
(later node data wins, removals accumulate, the first ``base_seq`` and the last ``seq`` are
kept), so a slow reader costs at most one pending entry per tree; when the pending bytes pass
``max_pending_bytes`` or the entries pass ``max_pending_trees`` they are dropped and the
subscriber is told to resync. A tree that goes away is one more entry (replacing that tree's
pending updates), charged like any other, and none at all when the subscriber never heard of
the tree (it came and went while the subscriber was not reading).
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from kiki_a11y_server.tree import Change, Tree, TreeLimits
from libkiki.a11y import wire
from libkiki.a11y.search import MAX_LIMIT, search
from libkiki.errors import InvalidParams, NotFound
from libkiki.flatbuf import Chunk

log = logging.getLogger(__name__)

# The most nodes one Query answers with (libkiki.a11y.search's rule, which the tool shares).
MAX_QUERY_LIMIT = MAX_LIMIT


@dataclass(frozen=True, slots=True)
class Filter:
    apps: frozenset[str] = frozenset()
    tree_id: int = 0
    root_id: int = 0
    roles: frozenset[int] = frozenset()
    max_depth: int = 0
    # The trees whose app the subscriber may see (the a11y policy); None: every tree.
    visible: Callable[[wire.App], bool] | None = None

    @classmethod
    def of(cls, sub: wire.Subscribe, visible: Callable[[wire.App], bool] | None = None) -> Filter:
        return cls(
            frozenset(sub.apps),
            sub.tree_id,
            sub.root_id,
            frozenset(sub.roles),
            sub.max_depth,
            visible,
        )

    @property
    def per_node(self) -> bool:
        return bool(self.tree_id and self.root_id) or bool(self.roles or self.max_depth)

    def subtree_root(self, tree: Tree) -> int:
        """The root of the subtree this filter selects in ``tree``; 0 for the whole tree.

        The schema's subtree is the pair (``tree_id``, ``root_id``): a ``root_id`` without a
        ``tree_id`` selects nothing (node ids are only unique within a tree)."""
        if self.tree_id and self.root_id and tree.tree_id == self.tree_id:
            return self.root_id
        return 0

    def view_root(self, tree: Tree) -> int:
        """The root a filtered view of ``tree`` names: the subtree's root for a subtree
        filter, the tree's root when the view has it, else 0 (a view of loose nodes)."""
        top = self.subtree_root(tree) or tree.root
        node = tree.nodes.get(top)
        return top if node is not None and self.wants_node(tree, node) else 0

    def wants_tree(self, tree: Tree) -> bool:
        if self.apps and tree.app.app_id not in self.apps:
            return False
        if self.visible is not None and not self.visible(tree.app):
            return False
        return not self.tree_id or tree.tree_id == self.tree_id

    def wants_node(self, tree: Tree, node: wire.Node) -> bool:
        if self.roles and node.role not in self.roles:
            return False
        sub_root = self.subtree_root(tree)
        top = sub_root or tree.root
        if sub_root and not tree.is_ancestor(top, node.id):
            return False
        if self.max_depth:
            return tree.depth.get(node.id, 0) - tree.depth.get(top, 0) <= self.max_depth
        return True


class Watcher(Protocol):
    """Told of every accepted change and every tree that goes, after the subscribers (the
    broker's change streams, :mod:`.changes`)."""

    def changed(self, tree: Tree, change: Change) -> None: ...

    def removed(self, tree: Tree) -> None: ...


@dataclass(slots=True)
class Pending:
    """A subscriber's coalesced, not yet sent changes of one tree."""

    base_seq: int
    seq: int
    nodes: dict[int, wire.Node]
    removed: set[int]
    root_id: int
    cause: int
    single: Change | None  # the one change this entry holds, while it holds only one
    gone: bool = False


@dataclass(eq=False)
class Subscriber:
    filter: Filter
    max_pending_bytes: int
    max_pending_trees: int = 1024
    pending: dict[int, Pending] = field(default_factory=dict)
    pending_bytes: int = 0
    # Frames to send before any update: (is a snapshot, frame).
    outbox: deque[tuple[bool, bytes]] = field(default_factory=deque)
    # Told to resync: updates are dropped until it asks for a snapshot.
    stale: bool = False
    resyncs: int = 0
    # Trees this subscriber has heard of (in its snapshot or in an update taken for it): only
    # those need a TreeGone when they go.
    known: set[int] = field(default_factory=set)


class Desktop:
    def __init__(
        self,
        *,
        max_pending_bytes: int = 4 << 20,
        max_pending_trees: int = 1024,
        tree_limits: TreeLimits | None = None,
    ) -> None:
        self.trees: dict[int, Tree] = {}
        self.subscribers: dict[int, Subscriber] = {}
        self.max_pending_bytes = max_pending_bytes
        self.max_pending_trees = max_pending_trees
        self.tree_limits = tree_limits or TreeLimits()
        self._ids = itertools.count(1)
        self._snapshot: bytes | None = None
        self.watchers: list[Watcher] = []

    # -- trees ---------------------------------------------------------------------------------

    def new_tree(self, app: wire.App) -> Tree:
        tree_id = next(self._ids)
        tree = Tree(tree_id, app._replace(tree_id=tree_id), self.tree_limits)
        self.trees[tree_id] = tree
        return tree

    def publish(self, tree: Tree, update: wire.TreeUpdate) -> Change:
        """Apply ``update`` (all or nothing) and queue it for every subscriber that wants it."""
        change = tree.apply(update)
        self._snapshot = None
        for sub in self.subscribers.values():
            if not sub.stale and sub.filter.wants_tree(tree):
                self._offer(sub, tree, change)
        self._tell(lambda w: w.changed(tree, change))
        return change

    def remove_tree(self, tree_id: int) -> None:
        tree = self.trees.pop(tree_id, None)
        if tree is None:
            return
        self._snapshot = None
        for sub in self.subscribers.values():
            if sub.stale or not sub.filter.wants_tree(tree):
                continue
            entry = sub.pending.pop(tree_id, None)
            if entry is not None:
                sub.pending_bytes -= self._cost(entry)
            if tree_id not in sub.known:
                continue  # it came and went unseen: nothing to tell
            gone = Pending(0, tree.seq, {}, set(), 0, 0, None, gone=True)
            sub.pending[tree_id] = gone
            sub.pending_bytes += self._cost(gone)
            self._check_bounds(sub, behind=True)
        self._tell(lambda w: w.removed(tree))

    def rename(self, tree_id: int, app: wire.App) -> None:
        """Tree ``tree_id`` is ``app``'s from now on. A mirror keeps a tree's app from its first
        appearance, so every subscriber that knows the tree is told to resync, and one that
        may no longer see it does not get it again."""
        tree = self.trees.get(tree_id)
        if tree is None:
            return
        tree.rename(app)
        self._snapshot = None
        for sub in self.subscribers.values():
            if not sub.stale and (tree_id in sub.known or tree_id in sub.pending):
                self._stale(sub, f"tree {tree_id} is now {app.app_id}'s; resync")

    def _tell(self, what: Callable[[Watcher], None]) -> None:
        # The change is made and subscribers have it: a bug in one watcher costs that watcher,
        # not the publisher its acknowledgement or the other watchers their news.
        for watcher in list(self.watchers):
            try:
                what(watcher)
            except Exception:
                log.exception("a watcher of the desktop failed")

    @property
    def node_count(self) -> int:
        return sum(len(t.nodes) for t in self.trees.values())

    # -- subscribers ---------------------------------------------------------------------------

    def subscribe(
        self,
        key: int,
        request: wire.Subscribe,
        visible: Callable[[wire.App], bool] | None = None,
    ) -> Subscriber:
        sub = Subscriber(
            Filter.of(request, visible), self.max_pending_bytes, self.max_pending_trees
        )
        self.subscribers[key] = sub
        self._queue_snapshot(sub, request.request_id)
        return sub

    def resync(self, key: int, request_id: int) -> None:
        sub = self.subscribers.get(key)
        if sub is None:
            raise InvalidParams("Resync needs a subscription (send Subscribe first)")
        sub.pending.clear()
        sub.pending_bytes = 0
        sub.stale = False
        # A snapshot or a "please resync" notice not yet sent is replaced by the new snapshot:
        # only the newest is worth sending (both are the only frames an outbox holds).
        sub.outbox.clear()
        self._queue_snapshot(sub, request_id)

    def _queue_snapshot(self, sub: Subscriber, request_id: int) -> None:
        sub.outbox.append((True, self.snapshot(request_id, sub.filter)))
        sub.known = {t.tree_id for t in self.trees.values() if sub.filter.wants_tree(t)}

    def unsubscribe(self, key: int) -> None:
        self.subscribers.pop(key, None)

    def snapshot(self, request_id: int, filt: Filter = Filter()) -> bytes:
        if filt == Filter():
            if self._snapshot is None:
                # Built with a placeholder request id, so that the field is there to patch.
                self._snapshot = wire.encode_raw(
                    wire.PLACEHOLDER_ID,
                    wire.RawSnapshot([t.full_chunk() for t in self.trees.values()]),
                )
            return wire.with_request_id(self._snapshot, request_id)
        trees = []
        for tree in self.trees.values():
            if not filt.wants_tree(tree):
                continue
            if not filt.per_node:
                trees.append(tree.full_chunk())
                continue
            chunks = [tree.chunks[i] for i, n in tree.nodes.items() if filt.wants_node(tree, n)]
            root = filt.view_root(tree)
            trees.append(
                wire.raw_tree_chunk(
                    wire.RawTreeUpdate(
                        tree.tree_id, tree.seq, 0, 0, root, chunks, (), 0, tree.app_chunk
                    )
                )
            )
        return wire.encode_raw(request_id, wire.RawSnapshot(trees))

    def take(self, sub: Subscriber) -> list[bytes]:
        """The frames to send now: control frames first, then one update per pending tree."""
        frames = [frame for _, frame in sub.outbox]
        sub.outbox.clear()
        for tree_id, entry in sub.pending.items():
            frames.append(self._frame(sub, tree_id, entry))
            if entry.gone:
                sub.known.discard(tree_id)
            else:
                sub.known.add(tree_id)
        sub.pending.clear()
        sub.pending_bytes = 0
        return frames

    def _offer(self, sub: Subscriber, tree: Tree, change: Change) -> None:
        entry = sub.pending.get(tree.tree_id)
        nodes = change.upserted
        removed = change.removed
        root_id = change.root_id
        if sub.filter.per_node:
            root_id = root_id and sub.filter.view_root(tree)
            wanted = [n for n in nodes if sub.filter.wants_node(tree, n)]
            if len(wanted) != len(nodes):
                keep = {n.id for n in wanted}
                removed = [*removed, *(n.id for n in nodes if n.id not in keep)]
                nodes = wanted
        if entry is None:
            entry = Pending(
                change.base_seq,
                change.seq,
                {n.id: n for n in nodes},
                set(removed),
                root_id,
                change.cause,
                change if not sub.filter.per_node else None,
            )
            sub.pending[tree.tree_id] = entry
            sub.pending_bytes += self._cost(entry)
        else:
            cost = 0
            for r in removed:
                if (was := entry.nodes.pop(r, None)) is not None:
                    cost -= _node_cost(was)
                if r not in entry.removed:
                    entry.removed.add(r)
                    cost += 4
            for n in nodes:
                if (was := entry.nodes.get(n.id)) is not None:
                    cost -= _node_cost(was)
                entry.nodes[n.id] = n
                cost += _node_cost(n)
            entry.seq = change.seq
            entry.root_id = root_id or entry.root_id
            entry.cause = change.cause
            entry.single = None
            sub.pending_bytes += cost
        # One change alone may be big (a whole new tree); the bound is on what piles up behind.
        self._check_bounds(sub, behind=len(sub.pending) > 1 or entry.single is None)

    @staticmethod
    def _check_bounds(sub: Subscriber, *, behind: bool) -> None:
        """Past either bound the backlog is dropped and the subscriber told to resync."""
        if len(sub.pending) > sub.max_pending_trees:
            reason = f"updates of more than {sub.max_pending_trees} trees waiting; resync"
        elif behind and sub.pending_bytes > sub.max_pending_bytes:
            reason = f"more than {sub.max_pending_bytes} bytes of updates waiting; resync"
        else:
            return
        Desktop._stale(sub, reason)

    @staticmethod
    def _stale(sub: Subscriber, reason: str) -> None:
        """Drop ``sub``'s backlog and tell it to resync (updates wait for its snapshot)."""
        sub.pending.clear()
        sub.pending_bytes = 0
        sub.stale = True
        sub.resyncs += 1
        sub.outbox.append((False, wire.encode(wire.Resync(0, 0, reason))))

    @staticmethod
    def _cost(entry: Pending) -> int:
        return 64 + sum(map(_node_cost, entry.nodes.values())) + 4 * len(entry.removed)

    def _frame(self, sub: Subscriber, tree_id: int, entry: Pending) -> bytes:
        tree = self.trees.get(tree_id)
        if entry.gone or tree is None:
            app = tree.app if tree is not None else None
            return wire.encode(wire.TreeGone(0, tree_id, app))
        if entry.single is not None:
            change = entry.single
            if change.frame is None:
                change.frame = self._encode(tree, entry)
            return change.frame
        return self._encode(tree, entry)

    @staticmethod
    def _encode(tree: Tree, entry: Pending) -> bytes:
        chunks = tree.chunks
        return wire.encode_raw(
            0,
            wire.RawTreeUpdate(
                tree.tree_id,
                entry.seq,
                entry.base_seq,
                0,
                entry.root_id,
                [chunks[i] for i in entry.nodes if i in chunks],
                sorted(entry.removed),
                entry.cause,
                tree.app_chunk,
            ),
        )

    # -- queries -------------------------------------------------------------------------------

    def find_node(self, tree_id: int, node_id: int) -> tuple[Tree, wire.Node]:
        tree = self.trees.get(tree_id)
        if tree is None:
            raise NotFound(f"tree {tree_id} does not exist (its app may have closed)")
        node = tree.nodes.get(node_id)
        if node is None:
            raise NotFound(f"node {node_id} no longer exists in tree {tree_id} ({tree.app.app_id})")
        return tree, node

    def query(
        self, q: wire.Query, visible: Callable[[wire.App], bool] | None = None
    ) -> tuple[list[Chunk], int]:
        trees = (t for t in self.trees.values() if visible is None or visible(t.app))
        found, total = search(trees, q)
        return [tree.chunks[node.id] for tree, node in found], total

    def __iter__(self) -> Iterator[Tree]:
        return iter(self.trees.values())


def _node_cost(node: wire.Node) -> int:
    """About what the node costs held in memory and encoded (bounds the pending queue)."""
    texts = len(node.name) + len(node.value) + len(node.description) + len(node.role_name)
    return 96 + texts + 4 * len(node.children)
