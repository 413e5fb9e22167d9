"""One AT-SPI app's mirror as a Kiki tree (sans-I/O).

The I/O layer fetches accessibles (:class:`Fetched`) and feeds them here; this module keeps
the id of every object path, the Kiki node built from it and its children, and turns a batch
of fetched accessibles into one Kiki update that the a11y-server's rules accept: new children
are new ids listed in the same update (a path seen again under another parent gets a fresh
id, since Kiki never reparents a live node), a child dropped by its parent goes with its
subtree, and a node whose Kiki form did not change is not sent.

Events only mark paths dirty (:meth:`AppModel.mark`); the app's loop fetches them and calls
:meth:`AppModel.apply`. Marks are a set, so an event storm on one node costs one fetch; past
``max_dirty`` paths the mirror asks for a fresh walk instead (:attr:`AppModel.resync`).
Extents re-read because a window moved (:meth:`AppModel.mark_extents_under`) are another queue,
bounded by ``max_nodes`` and drained ``max_dirty`` at a time (:meth:`AppModel.take_extents`):
a big window that moves keeps its node ids (a resync would give every node a new one, and
every ref an agent holds would die).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from kiki_a11y_server.atspi import roles
from libkiki.a11y import wire

A = wire.ACTIONS
S = wire.STATES

# What an event says changed, so that a refresh asks only for that (Calls.refresh). PATCHED:
# the event carried the change itself (model.patch): republish, ask nothing.
ALL = "all"
PATCHED = "patched"
ASPECTS = ("name", "state", "children", "value", "bounds", PATCHED, ALL)

# Text longer than this is cut (a terminal's scrollback, a document): the Kiki value is for the
# agent's eyes, and the a11y-server bounds what a node may hold.
MAX_TEXT = 16_384


def text_valued(f: Fetched) -> bool:
    """Whether the node's value is its text (an editable text that is no password)."""
    states = roles.atspi_state_names(f.states)
    editable = "editable" in states or "EditableText" in f.interfaces
    password = roles.kiki_role(f.role)[1] == "password text"
    return "Text" in f.interfaces and editable and not password


def aspect_of(member: str, detail: str) -> str:
    """The aspect an AT-SPI event (its D-Bus member and detail) changes."""
    if member == "ChildrenChanged":
        return "children"
    if member in ("StateChanged", "Focus"):
        return "state"
    if member in ("TextChanged", "ValueChanged"):
        return "value"
    if member == "BoundsChanged":
        return "bounds"
    if member == "PropertyChange":
        if detail in ("accessible-name", "accessible-description"):
            return "name"
        if detail == "accessible-value":
            return "value"
    return ALL


@dataclass(frozen=True, slots=True)
class Fetched:
    """What AT-SPI said about one accessible (paths are on the app's own bus name)."""

    path: str
    role: int
    name: str = ""
    description: str = ""
    states: tuple[int, ...] = ()
    children: tuple[str, ...] = ()
    interfaces: frozenset[str] = frozenset()
    extents: tuple[int, int, int, int] | None = None
    actions: tuple[str, ...] = ()
    value: str = ""
    numeric: float | None = None
    increment: float = 0.0


@dataclass(slots=True)
class Entry:
    path: str
    parent: int
    node: wire.Node
    actions: tuple[str, ...] = ()
    interfaces: frozenset[str] = frozenset()
    numeric: float | None = None
    increment: float = 0.0
    source: Fetched | None = None  # what it was built from: a refresh asks by its interfaces


@dataclass(slots=True)
class Batch:
    """One update: the nodes to send (new ones included) and the ids the server will drop."""

    nodes: list[wire.Node] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)


def kiki_node(node_id: int, f: Fetched, children: tuple[int, ...]) -> wire.Node:
    role, _ = roles.kiki_role(f.role)
    atspi = roles.atspi_state_names(f.states)
    states = roles.kiki_states_of(atspi)
    actions: list[int] = []
    if roles.press_action(list(f.actions)) >= 0:
        actions.append(A["press"])
    if "Component" in f.interfaces and "focusable" in atspi:
        actions.append(A["focus"])
    # Editable text without EditableText (Chromium's fields) is typed into (actions.py).
    typed = {"Text", "Component"} <= f.interfaces
    editable = "editable" in atspi and ("EditableText" in f.interfaces or typed)
    # A progress bar's Value is the app's to change; AT-SPI offers it, the bridge does not.
    settable = "Value" in f.interfaces and role != wire.ROLES["progressBar"]
    if editable or settable:
        actions.append(A["setValue"])
    if settable:
        actions += (A["increment"], A["decrement"])
    if roles.named_action(list(f.actions), roles.EXPAND_NAMES) >= 0:
        actions.append(A["collapse"] if states & S["expanded"] else A["expand"])
    if roles.named_action(list(f.actions), roles.MENU_NAMES) >= 0:
        actions.append(A["showMenu"])
    bounds = f.extents if f.extents and (f.extents[2] or f.extents[3]) else None
    return wire.Node(
        node_id,
        role,
        f.name,
        f.description,
        f.value,
        states,
        bounds,
        tuple(actions),
        children,
        role_name=roles.role_name(f.role),
    )


class AppModel:
    """The mirror of one app (one bus name): path <-> id, Kiki nodes, dirty marks."""

    def __init__(
        self, *, max_nodes: int = 20_000, max_children: int = 2_000, max_dirty: int = 2_000
    ) -> None:
        self.max_nodes = max_nodes
        self.max_children = max_children
        self.max_dirty = max_dirty
        self.ids: dict[str, int] = {}
        self.entries: dict[int, Entry] = {}
        self.root_id = 0
        self.next_id = 1
        # path -> what changed (ASPECTS; ALL for everything), in event order
        self.dirty: dict[str, set[str]] = {}
        self.resync = False
        self.fetching: set[str] = set()  # the dirty paths a round is fetching now
        # Paths whose extents only are to be asked again (a window moved), in order: a dict
        # as an ordered set, at most max_nodes long.
        self.extents_due: dict[str, None] = {}

    # -- events --------------------------------------------------------------------------------

    def mark(self, path: str, aspect: str = ALL) -> bool:
        """An event says ``aspect`` of ``path`` changed; True if it is in the mirror (and now
        dirty). Marks of one path merge: a storm on a node is one fetch."""
        if path not in self.ids:
            return False
        if len(self.dirty) >= self.max_dirty and path not in self.dirty:
            self.resync = True
            return True
        self.dirty.setdefault(path, set()).add(aspect)
        return True

    def mark_extents_under(self, path: str) -> bool:
        """Queue ``path`` and everything under it for their extents (a window moved: every
        node's screen position changed, and the app says so of none of them). Never a resync,
        whatever the count: True when anything was queued."""
        stack = [self.ids.get(path, 0)]
        queued = False
        while stack and len(self.extents_due) < self.max_nodes:
            entry = self.entries.get(stack.pop())
            if entry is not None:
                self.extents_due[entry.path] = None
                queued = True
                stack.extend(entry.node.children)
        return queued

    def take_extents(self) -> list[str]:
        """The next at most ``max_dirty`` queued paths (still in the mirror) to ask for their
        extents; the rest wait for the next round."""
        chunk: list[str] = []
        while self.extents_due and len(chunk) < self.max_dirty:
            path = next(iter(self.extents_due))
            del self.extents_due[path]
            if path in self.ids:
                chunk.append(path)
        self.fetching.update(chunk)  # events meanwhile: fetched again, not patched
        return chunk

    def windows(self) -> list[tuple[str, tuple[int, int, int, int] | None]]:
        """The app's top-level accessibles (its windows) and the screen extents the mirror
        holds for each, of those with a Component."""
        root = self.entries.get(self.root_id)
        out = []
        for child in root.node.children if root is not None else ():
            entry = self.entries[child]
            if entry.source is not None and "Component" in entry.interfaces:
                out.append((entry.path, entry.source.extents))
        return out

    def take_dirty(self) -> dict[str, set[str]]:
        dirty, self.dirty = self.dirty, {}
        self.fetching = set(dirty)
        return dirty

    def patch(self, path: str, member: str, detail: str, one: int, two: int, data: object) -> bool:
        """Apply what an event carries (a state bit, inserted or deleted text, a new name) to
        the mirror's copy of ``path``, so that no call is needed; False when it cannot (unknown
        path or detail, text that does not match, a fetch of the path under way): the caller
        marks the aspect instead."""
        entry = self.entries.get(self.ids.get(path, 0))
        f = entry.source if entry is not None else None
        if f is None or path in self.fetching or self.resync:
            return False
        kind = detail.split(":", 1)[0]
        if member == "StateChanged" and kind in roles.ATSPI_STATE_BITS:
            bit = roles.ATSPI_STATE_BITS[kind]
            words = [*f.states, 0, 0][:2]
            words[bit // 32] = (
                words[bit // 32] | (1 << bit % 32) if one else words[bit // 32] & ~(1 << bit % 32)
            )
            f = dataclasses.replace(f, states=tuple(words))
        elif member == "TextChanged" and isinstance(data, str) and text_valued(f):
            value = f.value
            if len(value) >= MAX_TEXT or not 0 <= one <= len(value) or len(data) != two:
                return False
            if kind == "insert":
                value = value[:one] + data + value[one:]
            elif kind == "delete" and value[one : one + two] == data:
                value = value[:one] + value[one + two :]
            else:
                return False
            f = dataclasses.replace(f, value=value[:MAX_TEXT])
        elif member == "PropertyChange" and isinstance(data, str) and kind == "accessible-name":
            f = dataclasses.replace(f, name=data)
        elif (
            member == "PropertyChange"
            and isinstance(data, str)
            and kind == "accessible-description"
        ):
            f = dataclasses.replace(f, description=data)
        else:
            return False
        entry.source = f  # type: ignore[union-attr]
        return self.mark(path, PATCHED)

    # -- updates -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything: the next :meth:`apply` with ``root`` builds a new tree."""
        self.ids.clear()
        self.entries.clear()
        self.dirty.clear()
        self.extents_due.clear()
        self.resync = False
        self.root_id = 0

    def new_children(self, f: Fetched) -> list[str]:
        """The children of an accessible in the mirror that it does not hold under it yet:
        the caller walks them (every descendant of a new node is new too)."""
        node_id = self.ids.get(f.path, 0)
        return [
            child
            for child in f.children[: self.max_children]
            if self._child_of(child, node_id) == 0
        ]

    def _child_of(self, path: str, parent: int) -> int:
        child_id = self.ids.get(path, 0)
        entry = self.entries.get(child_id)
        return child_id if entry is not None and entry.parent == parent else 0

    def apply(self, fetched: dict[str, Fetched], *, root: str = "") -> Batch:
        """Turn fetched accessibles into one update. ``root``: a new tree rooted there.

        ``fetched`` holds the dirty paths and every new descendant the caller walked; a child
        that is not there (gone meanwhile, over the node budget) is left out of its parent's
        list, and a path listed twice in one batch (a cycle) is kept once."""
        self.fetching = set()
        batch = Batch()
        new: dict[str, int] = {}  # path -> id of the nodes this batch creates
        parents: dict[int, int] = {}
        if root:
            self.reset()
            self.root_id = self._allocate(root, new)
            parents[self.root_id] = 0
        filled: set[int] = set()
        for path in fetched:
            node_id = new.get(path, 0)
            entry = None if node_id else self.entries.get(self.ids.get(path, 0))
            if entry is not None:
                filled.add(self.ids[path])
                self._fill(
                    fetched[path],
                    self.ids[path],
                    entry.node,
                    entry.parent,
                    fetched,
                    new,
                    parents,
                    batch,
                )
            elif node_id and node_id not in filled:
                filled.add(node_id)
                self._fill(
                    fetched[path], node_id, None, parents[node_id], fetched, new, parents, batch
                )
        # Children created after their path went by (a node moved under a later path).
        while pending := [(p, i) for p, i in new.items() if i not in filled]:
            for path, node_id in pending:
                filled.add(node_id)
                self._fill(
                    fetched[path], node_id, None, parents[node_id], fetched, new, parents, batch
                )
        removed = set(batch.removed)
        batch.nodes = [n for n in batch.nodes if n.id not in removed]
        return batch

    def _fill(
        self,
        f: Fetched,
        node_id: int,
        old: wire.Node | None,
        parent: int,
        fetched: dict[str, Fetched],
        new: dict[str, int],
        parents: dict[int, int],
        batch: Batch,
    ) -> None:
        children: list[int] = []
        for child in f.children[: self.max_children]:
            child_id = 0 if child in new else self._child_of(child, node_id)
            if child_id == 0:
                # A path never allocated is no one's ancestor (every node's path is in ids).
                if (
                    child in new
                    or child not in fetched
                    or (child in self.ids and self._above(child, node_id, parents))
                ):
                    continue  # twice in this batch, not walked, or an ancestor (a cycle)
                if len(self.entries) + len(new) >= self.max_nodes:
                    continue
                child_id = self._allocate(child, new)
                parents[child_id] = node_id
            children.append(child_id)
        node = kiki_node(node_id, f, tuple(children))
        if old is not None:
            for gone in set(old.children) - set(children):
                batch.removed.extend(self._drop(gone))
        self.entries[node_id] = Entry(
            f.path, parent, node, f.actions, f.interfaces, f.numeric, f.increment, f
        )
        if node != old:
            batch.nodes.append(node)

    def _above(self, path: str, node_id: int, parents: dict[int, int]) -> bool:
        """Whether ``path`` is ``node_id`` or one of its ancestors (the app lists a cycle)."""
        current, hops = node_id, 0
        while current and hops <= len(self.entries) + len(parents):
            entry = self.entries.get(current)
            if (entry is not None and entry.path == path) or self.ids.get(path) == current:
                return True
            current = entry.parent if entry is not None else parents.get(current, 0)
            hops += 1
        return False

    def _allocate(self, path: str, assigned: dict[str, int]) -> int:
        node_id = self.next_id
        self.next_id += 1
        self.ids[path] = node_id
        assigned[path] = node_id
        return node_id

    def _drop(self, node_id: int) -> list[int]:
        """Forget ``node_id`` and its subtree; returns the ids dropped."""
        dropped = []
        stack = [node_id]
        while stack:
            current = stack.pop()
            entry = self.entries.pop(current, None)
            if entry is None:
                continue
            dropped.append(current)
            if self.ids.get(entry.path) == current:
                del self.ids[entry.path]
                self.dirty.pop(entry.path, None)
                self.extents_due.pop(entry.path, None)
            stack.extend(entry.node.children)
        return dropped

    def known(self, path: str) -> Fetched | None:
        """What the mirror last fetched of ``path`` (None: not in it)."""
        entry = self.entries.get(self.ids.get(path, 0))
        return entry.source if entry is not None else None

    def nodes(self) -> list[wire.Node]:
        return [e.node for e in self.entries.values()]
