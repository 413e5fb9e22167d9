"""Kiki actions as AT-SPI calls (sans-I/O): which call performs an action on a mirrored node.

The table is in the README (the AT-SPI bridge's Actions); :meth:`Calls.perform` makes the call.
"""

from __future__ import annotations

from dataclasses import dataclass

from kiki_a11y_server.atspi import roles
from kiki_a11y_server.atspi.model import AppModel, Entry
from libkiki.a11y import wire
from libkiki.errors import InvalidParams, NotFound

A = wire.ACTIONS


@dataclass(frozen=True, slots=True)
class Call:
    """An AT-SPI call that performs a Kiki action: ``member`` of ``interface`` on ``path``."""

    path: str
    interface: str
    member: str
    signature: str = ""
    body: tuple[object, ...] = ()
    what: str = ""
    destination: str = ""  # "": the app itself


# Typing goes through the registry's device event controller (XTest underneath: X11 only).
DEC = "/org/a11y/atspi/registry/deviceeventcontroller"
KEY_SYM, KEY_STRING = 3, 4  # AtspiKeySynthType
DELETE = 0xFFFF  # XK_Delete


def plan(model: AppModel, node_id: int, action: int, value: str) -> tuple[Call, ...]:
    """The AT-SPI calls that perform ``action`` on ``node_id`` (in order), or a typed refusal."""
    entry = model.entries.get(node_id)
    if entry is None:
        raise NotFound(f"node {node_id} is not in this app's tree")
    name = wire.ACTION_NAMES.get(action, str(action))
    if action not in entry.node.actions:
        raise InvalidParams(f"node {node_id} does not take {name}")
    names = list(entry.actions)
    if action == A["press"]:
        index = roles.press_action(names)
        return (_do(entry, index),)
    if action in (A["expand"], A["collapse"]):
        return (_do(entry, roles.named_action(names, roles.EXPAND_NAMES)),)
    if action == A["showMenu"]:
        return (_do(entry, roles.named_action(names, roles.MENU_NAMES)),)
    if action == A["focus"]:
        return (_focus(entry),)
    if action == A["setValue"] and "EditableText" in entry.interfaces:
        return (
            Call(
                entry.path,
                "org.a11y.atspi.EditableText",
                "SetTextContents",
                "s",
                (value,),
                "EditableText.SetTextContents",
            ),
        )
    if action == A["setValue"] and "Value" not in entry.interfaces:
        return _typing(entry, value)
    if action in (A["setValue"], A["increment"], A["decrement"]):
        return (_value(entry, action, value),)
    raise InvalidParams(f"node {node_id} does not take {name}")


def _focus(entry: Entry) -> Call:
    return Call(entry.path, "org.a11y.atspi.Component", "GrabFocus", what="GrabFocus")


def _typing(entry: Entry, value: str) -> tuple[Call, ...]:
    """An editable text without EditableText (Chromium's fields): focus it, select what it
    holds, and type the new text over it (or delete it)."""
    calls = [_focus(entry)]
    length = len(entry.node.value)
    if length:
        calls.append(
            Call(
                entry.path,
                "org.a11y.atspi.Text",
                "AddSelection",
                "ii",
                (0, length),
                f"Text.AddSelection(0, {length})",
            )
        )
    typed = (0, value, KEY_STRING) if value else (DELETE, "", KEY_SYM)
    what = f"typed {len(value)} characters" if value else "pressed Delete"
    calls.append(
        Call(
            DEC,
            "org.a11y.atspi.DeviceEventController",
            "GenerateKeyboardEvent",
            "isu",
            typed,
            f"{what} (DeviceEventController)",
            "org.a11y.atspi.Registry",
        )
    )
    return tuple(calls)


def _do(entry: Entry, index: int) -> Call:
    return Call(
        entry.path,
        "org.a11y.atspi.Action",
        "DoAction",
        "i",
        (index,),
        f"DoAction({index}, {entry.actions[index]!r})",
    )


def _value(entry: Entry, action: int, value: str) -> Call:
    current = entry.numeric or 0.0
    if action == A["setValue"]:
        try:
            target = float(value)
        except ValueError:
            raise InvalidParams(f"not a number: {value!r}") from None
    else:
        step = entry.increment or 1.0
        target = current + step if action == A["increment"] else current - step
    return Call(
        entry.path,
        "org.freedesktop.DBus.Properties",
        "Set",
        "ssv",
        ("org.a11y.atspi.Value", "CurrentValue", target),
        f"Value.CurrentValue = {target:g}",
    )
