"""A small app with a real-looking accessibility tree, which `kiki up` starts and tests drive.

A window with a form (name, email, a checkbox, Save and Clear buttons), a list of contacts and a
status line. It reacts to actions the way a toolkit would: ``setValue`` types into a field,
``focus`` moves the focus, ``press`` toggles the checkbox or saves the form (a new list item,
the fields cleared, the status updated), ``select`` selects a contact. Each reaction is
published as an update caused by the agent.

Run it by itself with ``python -m kiki_cli.demos.a11y_app [--socket PATH]``; it publishes again
whenever the server restarts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path

from kiki_cli.demos import A11Y_APP_ID
from libkiki.a11y import wire
from libkiki.a11y.publisher import A11yPublisher
from libkiki.errors import InvalidParams, KikiError

log = logging.getLogger(__name__)

R = wire.ROLES
A = wire.ACTIONS
S = wire.STATES
AGENT = wire.CAUSES["agent"]

APP, WINDOW, FORM, NAME, EMAIL, SUBSCRIBE, BUTTONS, SAVE, CLEAR, LIST, STATUS = range(1, 12)
FIRST_ITEM = 100


class DemoApp:
    def __init__(self, contacts: tuple[str, ...] = ("Ada Lovelace", "Alan Turing")) -> None:
        self.name = ""
        self.email = ""
        self.subscribe = False
        self.focused = NAME
        self.contacts: dict[int, str] = {}
        self.selected = 0
        self.status = "Ready"
        self.next_item = FIRST_ITEM
        for c in contacts:
            self.contacts[self.next_item] = c
            self.next_item += 1
        self.publisher: A11yPublisher | None = None

    # -- the tree ------------------------------------------------------------------------------

    def _focus(self, node_id: int) -> int:
        return S["focused"] if self.focused == node_id else 0

    def node(self, node_id: int) -> wire.Node:
        field = S["focusable"] | S["editable"]
        match node_id:
            case 1:  # APP
                return wire.Node(APP, R["application"], "Kiki demo", children=(WINDOW,))
            case 2:  # WINDOW
                return wire.Node(
                    WINDOW,
                    R["window"],
                    "Contacts — Kiki demo",
                    bounds=(0, 0, 640, 480),
                    children=(FORM, LIST, STATUS),
                )
            case 3:  # FORM
                return wire.Node(
                    FORM,
                    R["form"],
                    "New contact",
                    bounds=(16, 16, 300, 220),
                    children=(NAME, EMAIL, SUBSCRIBE, BUTTONS),
                )
            case 4:  # NAME
                return wire.Node(
                    NAME,
                    R["textField"],
                    "Name",
                    value=self.name,
                    states=field | S["required"] | self._focus(NAME),
                    bounds=(24, 40, 280, 28),
                    actions=(A["setValue"], A["focus"]),
                )
            case 5:  # EMAIL
                return wire.Node(
                    EMAIL,
                    R["textField"],
                    "Email",
                    value=self.email,
                    states=field | self._focus(EMAIL),
                    bounds=(24, 80, 280, 28),
                    actions=(A["setValue"], A["focus"]),
                )
            case 6:  # SUBSCRIBE
                return wire.Node(
                    SUBSCRIBE,
                    R["checkBox"],
                    "Subscribe to the newsletter",
                    states=S["focusable"] | (S["checked"] if self.subscribe else 0),
                    bounds=(24, 120, 280, 24),
                    actions=(A["press"], A["focus"]),
                )
            case 7:  # BUTTONS
                # A toolkit's layout box: no name, no role of its own (pruned in the text view).
                return wire.Node(BUTTONS, R["generic"], children=(SAVE, CLEAR))
            case 8:  # SAVE
                return wire.Node(
                    SAVE,
                    R["button"],
                    "Save",
                    description="Add the contact to the list",
                    states=S["focusable"],
                    bounds=(24, 160, 80, 32),
                    actions=(A["press"], A["focus"]),
                )
            case 9:  # CLEAR
                return wire.Node(
                    CLEAR,
                    R["button"],
                    "Clear",
                    states=S["focusable"],
                    bounds=(112, 160, 80, 32),
                    actions=(A["press"], A["focus"]),
                )
            case 10:  # LIST
                return wire.Node(
                    LIST,
                    R["list"],
                    "Contacts",
                    bounds=(340, 16, 280, 400),
                    children=tuple(self.contacts),
                )
            case 11:  # STATUS
                return wire.Node(STATUS, R["statusBar"], "Status", value=self.status)
        name = self.contacts[node_id]
        selected = S["selected"] if node_id == self.selected else 0
        return wire.Node(
            node_id,
            R["listItem"],
            name,
            states=S["selectable"] | selected,
            actions=(A["select"],),
        )

    def all_nodes(self) -> list[wire.Node]:
        return [self.node(i) for i in (*range(APP, STATUS + 1), *self.contacts)]

    # -- actions -------------------------------------------------------------------------------

    async def on_action(self, request: wire.ActionRequest) -> str:
        changed, message = self.perform(request.node_id, request.action, request.value)
        assert self.publisher is not None
        await self.publisher.publish([self.node(i) for i in changed], cause=AGENT)
        return message

    def perform(self, node_id: int, action: int, value: str) -> tuple[list[int], str]:
        """Change the model; returns the nodes that changed and what to tell the requester."""
        if action == A["setValue"] and node_id in (NAME, EMAIL):
            if node_id == NAME:
                self.name = value
            else:
                self.email = value
            return [node_id], f"set to {value!r}"
        if action == A["focus"]:
            before, self.focused = self.focused, node_id
            return sorted({before, node_id}), "focused"
        if action == A["press"] and node_id == SUBSCRIBE:
            self.subscribe = not self.subscribe
            return [SUBSCRIBE], "checked" if self.subscribe else "unchecked"
        if action == A["press"] and node_id == SAVE:
            if not self.name.strip():
                raise InvalidParams("the Name field is empty")
            item = self.next_item
            self.next_item += 1
            entry = self.name if not self.email else f"{self.name} <{self.email}>"
            self.contacts[item] = entry
            self.name = self.email = ""
            self.status = f"Saved {entry}"
            return [LIST, item, NAME, EMAIL, STATUS], self.status
        if action == A["press"] and node_id == CLEAR:
            self.name = self.email = ""
            self.status = "Cleared"
            return [NAME, EMAIL, STATUS], "cleared"
        if action == A["select"] and node_id in self.contacts:
            before, self.selected = self.selected, node_id
            return sorted({before, node_id} & set(self.contacts)), "selected"
        raise InvalidParams(f"node {node_id} does not take that action")


async def run(path: Path | None = None, *, ready: asyncio.Event | None = None) -> None:
    app = DemoApp()
    async with A11yPublisher(path, label="Kiki demo", on_action=app.on_action) as pub:
        app.publisher = pub
        # The first update names the app (see A11Y_APP_ID); a server whose policy does not trust
        # this user to name it keeps the usual pid-N.
        first = wire.TreeUpdate(
            root_id=APP,
            nodes=tuple(app.all_nodes()),
            app=wire.App(0, A11Y_APP_ID, os.getpid(), label="Kiki demo"),
        )
        ack = await pub.request(first)
        assert isinstance(ack, wire.Ack)
        pub.tree_id, pub.seq = ack.tree_id, ack.seq
        log.info("demo tree published (tree %d, %d nodes)", pub.tree_id, len(app.all_nodes()))
        if ready is not None:
            ready.set()
        await pub.closed.wait()


async def run_forever(path: Path | None = None, retry: float = 1.0) -> None:
    """Publish, and publish again whenever the server comes back (it may restart)."""
    while True:
        try:
            await run(path)
            log.info("the a11y-server went away; reconnecting")
        except KikiError as exc:
            log.debug("a11y-server not reachable (%s); retrying", exc)
        await asyncio.sleep(retry)  # a restarting server: nothing to wait on but time


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m kiki_cli.demos.a11y_app", description=__doc__)
    parser.add_argument("--socket", type=Path, help="the a11y-server's socket")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_forever(args.socket))


if __name__ == "__main__":
    main()
