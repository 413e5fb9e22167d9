"""Notifications to the peer: sent when written, waiting only while the transport is full, or
sent now only if nothing is queued ahead of them (the ``try_`` forms, for wake-up messages a
sender coalesces)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from libkiki.rpc.link import Link
from libkiki.rpc.messages import Params
from libkiki.rpc.protocol import RpcCore

__all__ = ["Notifying"]


class Notifying:
    """The notifications one connection sends. ``check_open()`` raises the connection's typed
    error once it is over; ``is_open()`` says whether it is still open."""

    __slots__ = ("_check_open", "_is_open", "_link", "_notification")

    def __init__(
        self,
        core: RpcCore,
        link: Link,
        check_open: Callable[[], None],
        is_open: Callable[[], bool],
    ) -> None:
        self._notification = core.notification
        self._link = link
        self._check_open = check_open
        self._is_open = is_open

    async def notify(self, method: str, params: Params | None = None) -> None:
        """Send a notification; wait while the transport is full."""
        self._check_open()
        await self._link.write(self._notification(method, params))

    async def notify_many(self, items: Sequence[tuple[str, Params | None]]) -> None:
        """Send notifications as separate lines in one ``write()``; wait only while the
        transport is paused (also when ``items`` is empty: a way to wait for the peer to read).

        Not a JSON-RPC batch: a peer counts a batch's entries against its in-flight limit all
        at once (and MCP has no batches since 2025-06-18), while separate lines are handled
        one by one. One ``write()`` of the joined bytes rather than ``writelines()``, which on
        CPython 3.13 never pauses the protocol.
        """
        self._check_open()
        notification = self._notification
        data = b"".join([notification(method, params) for method, params in items])
        if data:
            await self._link.write(data)
        else:
            await self._link.drained()

    def try_notify(self, method: str, params: Params | None = None) -> bool:
        """Send a notification now if nothing is queued ahead of it; never wait, never queue.

        False (and nothing sent) when the transport still holds unsent bytes or the connection
        is closed: for wake-up style messages that the sender coalesces and sends later, so a
        slow reader costs it nothing.
        """
        return self._is_open() and self._link.try_write(self._notification, method, params)

    def try_notify_many(self, items: Sequence[tuple[str, Params | None]]) -> bool:
        """:meth:`notify_many` now, if nothing is queued ahead: separate lines in one
        ``write()``, never waiting, never queued behind unsent bytes. False (and nothing sent)
        as for :meth:`try_notify`."""
        return self._is_open() and self._link.try_write(self._lines, items, None)

    def _lines(self, items: Sequence[tuple[str, Params | None]], _: None) -> bytes:
        notification = self._notification
        return b"".join([notification(method, params) for method, params in items])
