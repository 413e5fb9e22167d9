"""The screen as the session document holds it, built from the a11y stream (sans-I/O).

``dev.kiki.a11y.subscribeChanges`` tells each app's tree as changes: a ``reset`` run carries
the whole tree, then each message removes nodes (with their subtrees) and upserts changed ones.
:class:`Screen` keeps each app's nodes and renders the ``screen`` value of the document:
``{"apps": [{"appId", "treeId", "revision", "nodes": [...], "truncated"?}]}``, each app's
nodes flattened in document order (depth first from its roots), each with ``ref``, ``id``,
``role``, ``name``, ``value``, ``states``, ``actions`` (those it has), ``parent`` and
``depth``. Bounded: at most ``max_apps`` apps, ``max_held`` nodes per app in memory and
``max_nodes`` per app in the document (then ``"truncated": true``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_NODES = 2000
MAX_HELD = 20_000
MAX_APPS = 32
# What a node carries into the document besides its place (parent, depth).
FIELDS = ("ref", "id", "role", "name", "value", "states", "actions")


@dataclass(slots=True)
class AppTree:
    app_id: str
    tree_id: int = 0
    revision: int = 0
    reset_revision: int | None = None
    nodes: dict[int, dict[str, Any]] = field(default_factory=dict)
    overflow: bool = False  # nodes were left out of memory: the tree is not whole


class Screen:
    def __init__(
        self, *, max_nodes: int = MAX_NODES, max_held: int = MAX_HELD, max_apps: int = MAX_APPS
    ) -> None:
        self.max_nodes = max_nodes
        self.max_held = max_held
        self.max_apps = max_apps
        # By tree (one per connected app; two connections of one app are two trees).
        self.apps: dict[int | str, AppTree] = {}
        # Each tree's value as last rendered, and the trees changed since: value() flattens
        # only those (a message changes one app; the screen is written at most 10 times/s).
        self._rendered: dict[int | str, dict[str, Any]] = {}
        self._changed: set[int | str] = set()
        self.renders = 0  # trees flattened, ever

    def clear(self) -> None:
        self.apps.clear()
        self._rendered.clear()
        self._changed.clear()

    def apply(self, message: Any) -> bool:
        """Take one ``#treeChanged`` message; whether the screen changed."""
        if not isinstance(message, dict) or not isinstance(app_id := message.get("appId"), str):
            return False
        tree_id = message.get("treeId")
        key: int | str = tree_id if isinstance(tree_id, int) else app_id
        if message.get("gone"):
            self._rendered.pop(key, None)
            self._changed.discard(key)
            return self.apps.pop(key, None) is not None
        tree = self.apps.get(key)
        if tree is None:
            if len(self.apps) >= self.max_apps:
                return False
            tree = self.apps[key] = AppTree(app_id)
        revision = message.get("revision")
        revision = revision if isinstance(revision, int) else tree.revision
        if message.get("reset") and tree.reset_revision != revision:
            # The first message of a reset run: what the stream said of the app before is gone.
            tree.nodes.clear()
            tree.overflow = False
            tree.reset_revision = revision
        for node_id in message.get("removed") or ():
            self._remove(tree, node_id)
        for node in message.get("changed") or ():
            if not isinstance(node, dict) or not isinstance(node_id := node.get("id"), int):
                continue
            if node_id in tree.nodes or len(tree.nodes) < self.max_held:
                tree.nodes[node_id] = node
            else:
                tree.overflow = True
        if isinstance(tree_id, int):
            tree.tree_id = tree_id
        tree.revision = revision
        self._changed.add(key)
        return True

    @staticmethod
    def _remove(tree: AppTree, node_id: Any) -> None:
        stack = [node_id]
        while stack:
            node = tree.nodes.pop(stack.pop(), None)
            if node is not None:
                stack.extend(c for c in node.get("children") or () if c in tree.nodes)

    def value(self) -> dict[str, Any]:
        """The ``screen`` value: its apps' entries are shared with later calls, not to be
        changed by the caller."""
        for key, tree in self.apps.items():
            if key in self._changed or key not in self._rendered:
                self._rendered[key] = self._flatten(tree)
                self.renders += 1
        self._changed.clear()
        return {"apps": [self._rendered[key] for key in self.apps]}

    def _flatten(self, tree: AppTree) -> dict[str, Any]:
        nodes = tree.nodes
        children = {c for node in nodes.values() for c in node.get("children") or ()}
        roots = sorted(i for i in nodes if i not in children)
        out: list[dict[str, Any]] = []
        seen: set[int] = set()
        truncated = tree.overflow
        # Depth first, in the children's order: a stack of (id, parent, depth), roots first.
        stack: list[tuple[int, int | None, int]] = [(r, None, 0) for r in reversed(roots)]
        while stack:
            node_id, parent, depth = stack.pop()
            if node_id in seen or (node := nodes.get(node_id)) is None:
                continue
            if len(out) >= self.max_nodes:
                truncated = True
                break
            seen.add(node_id)
            entry = {k: node[k] for k in FIELDS if k in node and node[k] not in (None, [])}
            entry["parent"] = parent
            entry["depth"] = depth
            out.append(entry)
            kids = [c for c in node.get("children") or () if isinstance(c, int)]
            stack.extend((c, node_id, depth + 1) for c in reversed(kids))
        app: dict[str, Any] = {
            "appId": tree.app_id,
            "treeId": tree.tree_id,
            "revision": tree.revision,
            "nodes": out,
        }
        if truncated:
            app["truncated"] = True
        return app
