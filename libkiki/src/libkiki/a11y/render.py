"""Accessibility trees as text an LLM (or a person) can read in one go.

::

    app org.example.Demo "Kiki demo" pid 4242 (tree 3)
    - window "Kiki demo" [3:1]
      - form "Sign in" [3:2]
        - textField "Name" [3:3] value="Ada" focused (setValue)
        - button "Save" [3:5] (press)

One line per node, indented by depth, with its short stable ref (``tree:node``, what
``kiki a11y act`` and the ``act`` tool take), its value, the states that matter and its
actions. A role Kiki has none for shows the publisher's name for it: ``unknown(block quote)``.
Empty wrappers (generic containers with no name, value or action, and unknown roles the
publisher did not name) are left out and their children move up a level; hidden subtrees are
left out. A budget of nodes and characters
keeps the text within what a prompt can hold: past it the outline stops and says how much was
left out.

A filtered view (a subscription by role or subtree) holds only some of a tree's nodes: a node
whose parent is not among them is shown at the top level, after the root (when the view has it),
in id order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from libkiki.a11y import wire


class TreeLike(Protocol):
    @property
    def tree_id(self) -> int: ...
    @property
    def app(self) -> wire.App: ...
    @property
    def root(self) -> int: ...
    @property
    def nodes(self) -> Mapping[int, wire.Node]: ...


WRAPPER_ROLES = frozenset(
    wire.ROLES[r] for r in ("unknown", "generic", "group", "pane", "region", "frame")
)
SHOWN_STATES = (
    "focused",
    "selected",
    "checked",
    "mixed",
    "pressed",
    "expanded",
    "collapsed",
    "disabled",
    "readOnly",
    "required",
    "invalid",
    "busy",
    "modal",
)
QUIET_ACTIONS = frozenset(
    wire.ACTIONS[a] for a in ("none", "focus", "scrollIntoView", "scrollUp", "scrollDown")
)
_HIDDEN = wire.STATES["hidden"]
_SHOWN_BITS = [(name, wire.STATES[name]) for name in SHOWN_STATES]


@dataclass(frozen=True, slots=True)
class Rendering:
    text: str
    nodes: int  # lines of nodes in the text
    total: int  # nodes in the trees
    truncated: bool


# Control characters (terminal escapes among them) are shown escaped, never printed.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_ROLE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789 _-")


def _quote(text: str, limit: int) -> str:
    text = " ".join(text.split()).translate(_CONTROLS)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def is_wrapper(node: wire.Node) -> bool:
    return (
        node.role in WRAPPER_ROLES
        and not node.role_name
        and not node.name
        and not node.value
        and all(a in QUIET_ACTIONS for a in node.actions)
        and not any(node.states & bit for _, bit in _SHOWN_BITS)
    )


def role_text(node: wire.Node) -> str:
    """The role as the outline shows it: ``unknown(ruler)`` when the publisher named a role
    Kiki has none for."""
    role = wire.ROLE_NAMES.get(node.role, str(node.role))
    if node.role_name:
        # The server refuses anything but wire.ROLE_NAME; escaped all the same, so that an
        # outline from another source cannot forge refs, names or actions through it.
        shown = "".join(
            c if c in _ROLE_NAME_CHARS else f"\\u{ord(c):04x}"
            for c in " ".join(node.role_name.split())[: wire.MAX_ROLE_NAME]
        )
        return f"{role}({shown})"
    return role


def node_line(node: wire.Node, *, text_limit: int = 80) -> str:
    parts = [role_text(node)]
    if node.name:
        parts.append(_quote(node.name, text_limit))
    parts.append(f"[{node.tree_id}:{node.id}]")
    if node.value:
        parts.append("value=" + _quote(node.value, text_limit))
    parts.extend(name for name, bit in _SHOWN_BITS if node.states & bit)
    actions = [wire.ACTION_NAMES.get(a, str(a)) for a in node.actions if a not in QUIET_ACTIONS]
    if actions:
        parts.append("(" + ", ".join(actions) + ")")
    if node.description:
        parts.append("— " + _quote(node.description, text_limit)[1:-1])
    return " ".join(parts)


def top_level(tree: TreeLike) -> list[int]:
    """Where the outline starts: the root if the view has it, then every node whose parent is
    not in the view (in id order); for a whole tree, just its root."""
    nodes = tree.nodes
    listed = {c for n in nodes.values() for c in n.children}
    tops = [tree.root] if tree.root in nodes else []
    tops += sorted(i for i in nodes if i not in listed and i != tree.root)
    return tops


def app_line(tree: TreeLike) -> str:
    app = tree.app
    label = f" {_quote(app.label, 60)}" if app.label else ""
    return f"app {app.app_id}{label} pid {app.pid} (tree {tree.tree_id})"


def render_text(
    trees: Iterable[TreeLike],
    *,
    max_nodes: int = 2000,
    max_chars: int = 32_000,
    max_depth: int = 64,
    include_hidden: bool = False,
    text_limit: int = 80,
) -> Rendering:
    lines: list[str] = []
    chars = 0
    shown = 0
    total = 0
    truncated = False
    for tree in trees:
        nodes = tree.nodes
        total += len(nodes)
        if truncated:
            continue
        header = app_line(tree)
        lines.append(header)
        chars += len(header) + 1
        stack: list[tuple[int, int]] = [(top, 0) for top in reversed(top_level(tree))]
        while stack:
            node_id, depth = stack.pop()
            node = nodes.get(node_id)
            if node is None:
                continue  # outside a filtered subscription
            if node.states & _HIDDEN and not include_hidden:
                continue
            child_depth = depth
            if not is_wrapper(node):
                line = "  " * depth + "- " + node_line(node, text_limit=text_limit)
                if shown >= max_nodes or chars + len(line) + 1 > max_chars:
                    truncated = True
                    break
                lines.append(line)
                chars += len(line) + 1
                shown += 1
                child_depth = depth + 1
            if child_depth > max_depth:
                truncated = True
                continue
            stack.extend((c, child_depth) for c in reversed(node.children))
    if truncated:
        lines.append(f"… truncated: {shown} of {total} nodes shown (raise the budget for more)")
    return Rendering("\n".join(lines), shown, total, truncated)


def node_json(node: wire.Node) -> dict[str, Any]:
    """A node as the lexicon ``dev.kiki.a11y.defs#node`` (and ``kiki a11y dump --json``)."""
    out: dict[str, Any] = {
        "ref": f"{node.tree_id}:{node.id}",
        "id": node.id,
        "treeId": node.tree_id,
        "role": wire.ROLE_NAMES.get(node.role, str(node.role)),
    }
    if node.role_name:
        out["roleName"] = node.role_name
    if node.name:
        out["name"] = node.name
    if node.description:
        out["description"] = node.description
    if node.value:
        out["value"] = node.value
    if node.states:
        out["states"] = wire.state_names(node.states)
    if node.actions:
        out["actions"] = [wire.ACTION_NAMES.get(a, str(a)) for a in node.actions]
    if node.bounds is not None:
        x, y, w, h = node.bounds
        out["bounds"] = {"x": x, "y": y, "width": w, "height": h}
    if node.children:
        out["children"] = list(node.children)
    return out


def app_json(app: wire.App) -> dict[str, Any]:
    out: dict[str, Any] = {"treeId": app.tree_id, "appId": app.app_id, "pid": app.pid}
    out["uid"] = app.uid
    if app.unit:
        out["unit"] = app.unit
    if app.label:
        out["label"] = app.label
    return out


def tree_json(tree: TreeLike) -> dict[str, Any]:
    """A tree with its nodes in outline order (parents before children)."""
    nodes = tree.nodes
    ordered: list[dict[str, Any]] = []
    stack = list(reversed(top_level(tree)))
    while stack:
        node = nodes.get(stack.pop())
        if node is None:
            continue
        ordered.append(node_json(node))
        stack.extend(reversed(node.children))
    return {"app": app_json(tree.app), "root": tree.root, "nodes": ordered}
