"""Publishing an app's accessibility tree to the a11y-server and answering actions on it.

::

    async def on_action(request: ActionRequest) -> str:
        ...                       # do it; raise a KikiError to refuse
        return "pressed"

    async with A11yPublisher(label="org.example.Editor", on_action=on_action) as pub:
        await pub.publish([Node(1, role, "Editor", children=(2,)), ...], root_id=1)
        await pub.publish([Node(2, ..., value="new text")])        # later: only what changed

``publish`` waits for the server's acknowledgement by default (and raises the server's error if
the update broke a rule); ``wait=False`` sends it without waiting, for hot paths.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Iterable

from libkiki.a11y import wire
from libkiki.a11y.client import _Connection
from libkiki.errors import KikiError

log = logging.getLogger(__name__)

ActionHandler = Callable[[wire.ActionRequest], Awaitable[str | None]]


class A11yPublisher(_Connection):
    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        label: str = "",
        on_action: ActionHandler | None = None,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(path, timeout, label or f"pid-{os.getpid()}")
        self.on_action = on_action
        self.tree_id = 0
        self.seq = 0

    async def __aenter__(self) -> A11yPublisher:
        try:
            await self._open()
        except BaseException:
            await self._close()  # the reader task and the socket of a refused connection
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    async def publish(
        self,
        nodes: Iterable[wire.Node],
        *,
        root_id: int = 0,
        clear: int = 0,
        cause: int = wire.CAUSES["app"],
        wait: bool = True,
    ) -> int:
        """Send one update (all of it applies, or none); returns the tree's new seq."""
        update = wire.TreeUpdate(0, 0, 0, 0, clear, root_id, tuple(nodes), (), cause)
        if not wait:
            self.send(update)
            return 0
        ack = await self.request(update)
        assert isinstance(ack, wire.Ack)
        self.tree_id, self.seq = ack.tree_id, ack.seq
        return ack.seq

    def received(self, message: wire.Message) -> None:
        if isinstance(message, wire.ActionRequest):
            self.spawn(self._answer(message))
        else:
            super().received(message)

    async def _answer(self, request: wire.ActionRequest) -> None:
        rid = request.request_id
        try:
            if self.on_action is None:
                raise KikiError("this app takes no actions")
            message = await self.on_action(request)
            self.send(wire.ActionResult(rid, message or ""))
        except KikiError as exc:
            self.send(wire.Error(rid, exc.jsonrpc_code, exc.message))
        except Exception:
            log.exception("action handler failed")
            self.send(wire.Error(rid, -32603, "Internal error"))
