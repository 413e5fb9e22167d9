"""The device link: the device's side of remote control, inside the relay.

For each session named in ``link_sessions`` the relay holds one ``device``-role member
(:class:`~.session_link.SessionLink`) that writes the device's live state into the session's
``device`` map and carries out the intents controllers write, through the tool broker on
behalf of the person who asked. One connection to the broker (:class:`~.broker.BrokerLink`)
feeds one :class:`~.state.DeviceState` for all of them. It talks to the other services only
over their sockets, through the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiki_sync_relay.link.broker import BrokerLink
from kiki_sync_relay.link.session_link import LinkSettings, SessionLink
from kiki_sync_relay.link.state import DeviceState
from kiki_sync_relay.link.values import is_fatal
from libkiki.backoff import RestartBackoff

if TYPE_CHECKING:
    from kiki_sync_relay.relay import Relay

__all__ = ["DeviceLink", "LinkSettings"]

log = logging.getLogger(__name__)


class DeviceLink:
    def __init__(
        self,
        relay: Relay,
        sessions: list[str],
        settings: LinkSettings,
        *,
        broker_socket: Path | None = None,
        tools: list[str] | None = None,
        backoff_max: float = 30.0,
        call_timeout: float = 30.0,
    ) -> None:
        self.relay = relay
        self.state = DeviceState()
        self.broker = BrokerLink(
            self.state,
            broker_socket,
            tools=tools if tools is not None else ["*"],
            backoff_max=backoff_max,
            call_timeout=call_timeout,
        )
        self.backoff_max = backoff_max
        self.links = {
            name: SessionLink(relay, name, self.state, self.broker, settings) for name in sessions
        }

    def view(self, name: str) -> dict[str, Any] | None:
        """What ``kiki session show`` tells of session ``name``'s link (None: not linked)."""
        link = self.links.get(name)
        if link is None:
            return None
        return {
            "linked": link.linked,
            "broker": {
                "connected": self.broker.client is not None,
                "connects": self.broker.connects,
                "failures": self.broker.failures,
                "lastError": self.broker.last_error,
            },
            "stale": self.state.stale_list(),
        }

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[DeviceLink]:
        if not self.links:
            yield self
            return
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self._guard("broker", self.broker.run))]
            tasks += [
                group.create_task(self._guard(f"session {name}", link.run))
                for name, link in self.links.items()
            ]
            try:
                yield self
            finally:
                for task in tasks:
                    task.cancel()

    async def _guard(self, what: str, run: Any) -> None:
        """Run ``run()`` again after a growing wait whenever it ends: a failure of the link
        never takes the relay down: nor one that is not an ``Exception`` (pycrdt's panic is a
        ``BaseException``), unless the process is stopping or the task cancelled."""
        backoff = RestartBackoff(initial=0.5, maximum=max(0.5, self.backoff_max))
        while True:
            backoff.started()
            backoff.ready(time.monotonic())
            try:
                await run()
            except BaseException as exc:
                if is_fatal(exc):
                    raise
                log.exception("the device link's %s failed", what)
            await asyncio.sleep(backoff.exited(time.monotonic()))
