"""``dev.kiki.a11y.subscribeChanges``, sans-I/O: one upstream's changes, coalesced per tree.

The broker opens one upstream per distinct params and fans it out to every subscriber it admits;
the upstream carries no caller. So a :class:`ChangeFeed` carries only the trees that everyone,
remote people included, may subscribe to (``visible``: :meth:`A11yPolicy.public`), decided again
each time it emits (a policy reload applies from the next message on).

Between two :meth:`ChangeFeed.take` calls (the stream's interval, and however long the broker
takes to read) the changes of a tree merge into one entry: the ids of the nodes changed (their
data is read from the tree when the message is built: the latest wins) and the ids removed. An
entry whose ids pass ``max_pending_ids`` is dropped for a *reset* (the whole tree, once), so a
publisher that floods changes costs the feed at most that many ids per tree. A message is kept
under ``max_message_bytes`` of JSON: a bigger change is a run of messages with the same revision.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from kiki_a11y_server.desktop import Desktop
from kiki_a11y_server.tree import Change, Tree
from libkiki.a11y import wire
from libkiki.a11y.render import is_wrapper, node_json, node_line

NSID = "dev.kiki.a11y.subscribeChanges"
TREE_CHANGED = NSID + "#treeChanged"
# What a value or description is cut to when a node would not fit a message otherwise.
_CUT = 2048
# The lexicon's bounds (dev.kiki.a11y.defs#node, in graphemes: as many characters are at most
# as many graphemes). Nothing on a11y.sock bounds these texts; a node past them would make the
# broker refuse its whole message.
_TEXT_BOUNDS = (("name", 1024), ("description", 4096), ("value", 16384))


@dataclass(slots=True)
class _Pending:
    changed: set[int] = field(default_factory=set)
    removed: set[int] = field(default_factory=set)
    reset: bool = False
    gone: wire.App | None = None  # the app of a tree that went
    seq: int = 0  # a gone tree's last revision


class ChangeFeed:
    """The changes one upstream has yet to emit (a :class:`~.desktop.Watcher`)."""

    def __init__(
        self,
        desktop: Desktop,
        visible: Callable[[wire.App], bool],
        *,
        app_id: str = "",
        max_pending_ids: int = 4096,
        max_message_bytes: int = 32 * 1024,
        max_nodes_per_message: int = 256,
        on_pending: Callable[[], None] = lambda: None,
    ) -> None:
        self.desktop = desktop
        self.visible = visible
        self.app_id = app_id
        self.max_pending_ids = max_pending_ids
        self.max_message_bytes = max_message_bytes
        self.max_nodes_per_message = max_nodes_per_message
        self.on_pending = on_pending
        self.pending: dict[int, _Pending] = {}
        # Trees this stream has sent (a reset first): only those get a `gone`.
        self.known: set[int] = set()
        # Entries dropped for a reset because they grew past max_pending_ids.
        self.resets = 0
        for tree in desktop:
            if self.wants(tree.app):
                self.pending[tree.tree_id] = _Pending(reset=True)

    def wants(self, app: wire.App) -> bool:
        return (not self.app_id or app.app_id == self.app_id) and self.visible(app)

    # -- Watcher -------------------------------------------------------------------------------

    def changed(self, tree: Tree, change: Change) -> None:
        if not self.wants(tree.app):
            return
        entry = self.pending.setdefault(tree.tree_id, _Pending())
        if not entry.reset:
            if change.root_id:  # a new tree, or one replaced whole
                entry.reset = True
            else:
                entry.changed.update(n.id for n in change.upserted)
                entry.removed.update(change.removed)
                if len(entry.changed) + len(entry.removed) > self.max_pending_ids:
                    entry.reset = True
                    self.resets += 1
            if entry.reset:
                entry.changed.clear()
                entry.removed.clear()
        self.on_pending()

    def removed(self, tree: Tree) -> None:
        self.pending.pop(tree.tree_id, None)
        if tree.tree_id in self.known:
            self.pending[tree.tree_id] = _Pending(gone=tree.app, seq=tree.seq)
            self.on_pending()

    # -- messages ------------------------------------------------------------------------------

    def take(self) -> Iterator[dict[str, Any]]:
        """The messages for everything pending now, which is cleared at once (what comes
        while they are iterated is pending for the next take). Built one at a time as they are
        iterated, so a whole big tree is never held as messages: a node changed meanwhile is
        sent as it is then (and again with the next take), one removed meanwhile is skipped
        (its removal comes with the next take)."""
        pending, self.pending = self.pending, {}
        return self._emit(pending)

    def _emit(self, pending: dict[int, _Pending]) -> Iterator[dict[str, Any]]:
        for tree_id, entry in pending.items():
            tree = self.desktop.trees.get(tree_id)
            if entry.gone is not None or tree is None or not self.wants(tree.app):
                # Gone, or no longer carried (a policy reload): forget it, if it was told.
                app = entry.gone or (tree.app if tree is not None else None)
                if tree_id in self.known and app is not None:
                    self.known.discard(tree_id)
                    seq = tree.seq if tree is not None else entry.seq
                    yield self._head(app, seq) | {"gone": True}
                continue
            if entry.reset or tree_id not in self.known:
                self.known.add(tree_id)
                yield from self._messages(tree, list(tree.nodes), (), reset=True)
            else:
                ids = list(entry.changed)
                yield from self._messages(tree, ids, sorted(entry.removed), reset=False)

    @staticmethod
    def _head(app: wire.App, seq: int) -> dict[str, Any]:
        return {"$type": TREE_CHANGED, "appId": app.app_id, "treeId": app.tree_id, "revision": seq}

    def _messages(
        self, tree: Tree, ids: list[int], removed: Iterable[int], *, reset: bool
    ) -> Iterator[dict[str, Any]]:
        """One change of ``tree`` as messages under the size bounds, in order: removals first
        (a subscriber applies them first), then nodes; ``reset`` on the first only."""
        head = self._head(tree.app, tree.seq)
        message: dict[str, Any] = dict(head, reset=True) if reset else dict(head)
        size = len(orjson.dumps(message))
        first = True
        for rid in removed:
            cost = len(str(rid)) + 1
            if size + cost > self.max_message_bytes:
                yield message
                message, size, first = dict(head), len(orjson.dumps(head)), False
            message.setdefault("removed", []).append(rid)
            size += cost
        for nid in ids:
            entry = self._entry(tree, nid)
            if entry is None:
                continue
            count = len(message.get("changed", ()))
            if count and (
                size + entry[2] > self.max_message_bytes or count >= self.max_nodes_per_message
            ):
                yield message
                message, size, first = dict(head), len(orjson.dumps(head)), False
                # Read again: the tree may have changed while the broker took that message.
                if (entry := self._entry(tree, nid)) is None:
                    continue
            doc, line, cost = entry
            message.setdefault("changed", []).append(doc)
            if line is not None:
                message.setdefault("outline", []).append(line)
            size += cost
        if first or "changed" in message or "removed" in message:
            yield message

    def _entry(self, tree: Tree, nid: int) -> tuple[dict[str, Any], str | None, int] | None:
        """Node ``nid`` as it is now: its JSON, its outline line, about what they add to a
        message; None when it is gone (removed since it changed: a removal says so)."""
        node = tree.nodes.get(nid)
        if node is None:
            return None
        doc = self._node(node)
        line = None if is_wrapper(node) else node_line(node)
        return doc, line, len(orjson.dumps(doc)) + 1 + (len(line.encode()) + 4 if line else 0)

    def _node(self, node: wire.Node) -> dict[str, Any]:
        doc = node_json(node)
        for key, bound in _TEXT_BOUNDS:
            if len(doc.get(key, "")) > bound:
                doc[key] = doc[key][:bound]
        if len(orjson.dumps(doc)) > self.max_message_bytes // 2:
            # Only a long value or description makes a node this big (name is bounded small):
            # the whole text is one dev.kiki.a11y.find away.
            for key in ("value", "description"):
                if key in doc:
                    doc[key] = doc[key][:_CUT]
        return doc
