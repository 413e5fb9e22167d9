"""AT-SPI's roles, states and action names, and how they map to Kiki's (sans-I/O).

The role and state lists are AT-SPI's enums (``AtspiRole``, ``AtspiStateType`` of
at-spi2-core) in their numeric order, spelled as ``Accessible.GetRoleName`` spells them; a test
checks the role names against a live app's answers. The README has the mapping as a table.
"""

from __future__ import annotations

import functools
from collections.abc import Set as AbstractSet

from libkiki.a11y import wire

R = wire.ROLES
S = wire.STATES
A = wire.ACTIONS

# AtspiRole, by value.
ATSPI_ROLES: tuple[str, ...] = (
    "invalid", "accelerator label", "alert", "animation", "arrow", "calendar", "canvas",
    "check box", "check menu item", "color chooser", "column header", "combo box",
    "date editor", "desktop icon", "desktop frame", "dial", "dialog", "directory pane",
    "drawing area", "file chooser", "filler", "focus traversable", "font chooser", "frame",
    "glass pane", "html container", "icon", "image", "internal frame", "label", "layered pane",
    "list", "list item", "menu", "menu bar", "menu item", "option pane", "page tab",
    "page tab list", "panel", "password text", "popup menu", "progress bar", "push button",
    "radio button", "radio menu item", "root pane", "row header", "scroll bar", "scroll pane",
    "separator", "slider", "spin button", "split pane", "status bar", "table", "table cell",
    "table column header", "table row header", "tear off menu item", "terminal", "text",
    "toggle button", "tool bar", "tool tip", "tree", "tree table", "unknown", "viewport",
    "window", "extended", "header", "footer", "paragraph", "ruler", "application",
    "autocomplete", "editbar", "embedded", "entry", "chart", "caption", "document frame",
    "heading", "page", "section", "redundant object", "form", "link", "input method window",
    "table row", "tree item", "document spreadsheet", "document presentation", "document text",
    "document web", "document email", "comment", "list box", "grouping", "image map",
    "notification", "info bar", "level bar", "title bar", "block quote", "audio", "video",
    "definition", "article", "landmark", "log", "marquee", "math", "rating", "timer", "static",
    "math fraction", "math root", "subscript", "superscript", "description list",
    "description term", "description value", "footnote", "content deletion",
    "content insertion", "mark", "suggestion", "push button menu",
)  # fmt: skip

# AtspiStateType, by bit number (GetState answers two 32-bit words of these bits).
ATSPI_STATES: tuple[str, ...] = (
    "invalid", "active", "armed", "busy", "checked", "collapsed", "defunct", "editable",
    "enabled", "expandable", "expanded", "focusable", "focused", "has-tooltip", "horizontal",
    "iconified", "modal", "multi-line", "multiselectable", "opaque", "pressed", "resizable",
    "selectable", "selected", "sensitive", "showing", "single-line", "stale", "transient",
    "vertical", "visible", "manages-descendants", "indeterminate", "required", "truncated",
    "animated", "invalid-entry", "supports-autocompletion", "selectable-text", "is-default",
    "visited", "checkable", "has-popup", "read-only",
)  # fmt: skip
ATSPI_STATE_BITS = {name: bit for bit, name in enumerate(ATSPI_STATES)}

# AT-SPI role name -> Kiki role name. Roles not listed here become "unknown", with the AT-SPI
# name in the node's role_name (``kiki_role``).
ROLE_MAP: dict[str, str] = {
    "application": "application",
    "frame": "window",
    "window": "window",
    "dialog": "dialog",
    "file chooser": "dialog",
    "color chooser": "dialog",
    "font chooser": "dialog",
    "alert": "alert",
    "notification": "alert",
    "push button": "button",
    "push button menu": "button",
    "toggle button": "toggleButton",
    "check box": "checkBox",
    "radio button": "radioButton",
    "combo box": "comboBox",
    "entry": "textField",
    "text": "textField",
    "password text": "textField",
    "autocomplete": "textField",
    "editbar": "textField",
    "spin button": "spinButton",
    "slider": "slider",
    "dial": "slider",
    "progress bar": "progressBar",
    "level bar": "progressBar",
    "scroll bar": "scrollBar",
    "label": "label",
    "accelerator label": "label",
    "caption": "label",
    "static": "label",
    "heading": "heading",
    "paragraph": "paragraph",
    "link": "link",
    "image": "image",
    "icon": "image",
    "animation": "image",
    "list": "list",
    "list item": "listItem",
    "list box": "listBox",
    "menu": "menu",
    "popup menu": "menu",
    "menu bar": "menuBar",
    "menu item": "menuItem",
    "tear off menu item": "menuItem",
    "check menu item": "menuItemCheckBox",
    "radio menu item": "menuItemRadio",
    "page tab list": "tabList",
    "page tab": "tab",
    "table": "table",
    "tree table": "table",
    "table row": "row",
    "table cell": "cell",
    "column header": "columnHeader",
    "table column header": "columnHeader",
    "row header": "rowHeader",
    "table row header": "rowHeader",
    "tree": "tree",
    "tree item": "treeItem",
    "tool bar": "toolBar",
    "status bar": "statusBar",
    "info bar": "statusBar",
    "tool tip": "tooltip",
    "separator": "separator",
    "grouping": "group",
    "form": "form",
    "landmark": "region",
    "document frame": "document",
    "document web": "document",
    "document text": "document",
    "document email": "document",
    "document spreadsheet": "document",
    "document presentation": "document",
    "article": "article",
    "internal frame": "frame",
    "panel": "pane",
    "scroll pane": "pane",
    "split pane": "pane",
    "option pane": "pane",
    "layered pane": "pane",
    "root pane": "pane",
    "glass pane": "pane",
    "viewport": "pane",
    "filler": "generic",
    "section": "generic",
    "html container": "generic",
    "embedded": "generic",
    "header": "banner",
    "terminal": "terminal",
    "canvas": "canvas",
    "drawing area": "canvas",
}

# Kiki state name <- the AT-SPI state that sets it (the rest are derived in ``kiki_states``).
STATE_MAP: dict[str, str] = {
    "focused": "focused",
    "focusable": "focusable",
    "selected": "selected",
    "selectable": "selectable",
    "checked": "checked",
    "indeterminate": "mixed",
    "pressed": "pressed",
    "expanded": "expanded",
    "editable": "editable",
    "read-only": "readOnly",
    "required": "required",
    "invalid-entry": "invalid",
    "busy": "busy",
    "modal": "modal",
    "multi-line": "multiline",
    "multiselectable": "multiselectable",
    "visited": "visited",
}

# Names of AT-SPI actions (``Action.GetName``, lower case) that Kiki's ``press`` performs, best
# first: a node offering several is pressed through the first of them it has.
PRESS_NAMES = (
    "click", "press", "activate", "toggle", "check", "uncheck", "jump", "open", "switch",
)  # fmt: skip
EXPAND_NAMES = ("expand or contract", "expand or collapse", "expand", "collapse")
MENU_NAMES = ("menu", "showmenu", "show menu", "popup")


def kiki_role(atspi_role: int) -> tuple[int, str]:
    """Kiki's role for an AT-SPI role number, and the AT-SPI role's name."""
    name = ATSPI_ROLES[atspi_role] if 0 <= atspi_role < len(ATSPI_ROLES) else f"role {atspi_role}"
    return R.get(ROLE_MAP.get(name, "unknown"), R["unknown"]), name


def role_name(atspi_role: int) -> str:
    """What a Kiki node's ``role_name`` is for an AT-SPI role: its name when Kiki's enum has no
    role for it; "" when it has one, and for AT-SPI's own "unknown" (which says nothing more)."""
    role, name = kiki_role(atspi_role)
    return name[: wire.MAX_ROLE_NAME] if role == R["unknown"] and name != "unknown" else ""


def atspi_state_names(words: tuple[int, ...] | list[int]) -> frozenset[str]:
    """The names of the bits set in GetState's answer (unknown bits as ``state <n>``)."""
    return _state_names(tuple(words[:2]))


# An app's accessibles share a few dozen state sets: each is spelled out once (bounded).
@functools.lru_cache(maxsize=4096)
def _state_names(words: tuple[int, ...]) -> frozenset[str]:
    names = set()
    for word_index, word in enumerate(words):
        for bit in range(32):
            if word & (1 << bit):
                number = word_index * 32 + bit
                names.add(ATSPI_STATES[number] if number < len(ATSPI_STATES) else f"state {number}")
    return frozenset(names)


@functools.lru_cache(maxsize=4096)
def kiki_states_of(atspi: frozenset[str]) -> int:
    """:func:`kiki_states` of a set :func:`atspi_state_names` made (one of an app's few)."""
    return kiki_states(atspi)


def kiki_states(atspi: AbstractSet[str]) -> int:
    bits = 0
    for name, kiki in STATE_MAP.items():
        if name in atspi:
            bits |= S[kiki]
    if not atspi:
        return bits  # an application's root: AT-SPI gives it no states at all
    if "expandable" in atspi and "expanded" not in atspi:
        bits |= S["collapsed"]
    if "enabled" not in atspi and "sensitive" not in atspi:
        bits |= S["disabled"]
    if "visible" not in atspi:
        bits |= S["hidden"]
    elif "showing" not in atspi:
        bits |= S["offscreen"]
    return bits


def press_action(names: list[str]) -> int:
    """The index of the AT-SPI action Kiki's ``press`` performs, or -1."""
    lowered = [n.lower() for n in names]
    for wanted in PRESS_NAMES:
        if wanted in lowered:
            return lowered.index(wanted)
    return -1


def named_action(names: list[str], wanted: tuple[str, ...]) -> int:
    lowered = [n.lower() for n in names]
    for name in wanted:
        if name in lowered:
            return lowered.index(name)
    return -1
