"""The gateway's private event streams on the broker: streams of the session user's own data
(``dev.kiki.notify.subscribeObserved``, what other apps notified) declared private when they are
registered (``kiki/registerTools`` ``privateSubscriptions``), so that the broker lets only root,
the session's own user (its agent) and those an ``allow`` rule names for that stream follow
them. A stream's provider never learns who subscribes: who may is the broker's decision, and
this is how the gateway asks for the narrow one.

They are served on a broker connection of their own, beside the :class:`~libkiki.tools.
ToolProvider` of the gateway's tools, because libkiki's provider registers its streams without
that flag; the same process, so the same provider identity and the same provide policy.
Registered again whenever the broker comes back, as the tools are.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from libkiki.backoff import RestartBackoff
from libkiki.errors import KikiError
from libkiki.rpc import Methods, connect_unix
from libkiki.streams_provider import ProvidedStreams, StreamFunc

log = logging.getLogger(__name__)


class PrivateStreams:
    """Stream generators (as :meth:`ToolProvider.subscription` takes them), registered on their
    own connection as private streams."""

    def __init__(self, path: Path, lexicons: list[dict[str, Any]] | None = None) -> None:
        self.path = path
        self.lexicons = list(lexicons or [])  # documents the broker may not have installed
        self.streams = ProvidedStreams()

    def subscription(self, nsid: str) -> Callable[[StreamFunc], StreamFunc]:
        def decorator(func: StreamFunc) -> StreamFunc:
            self.streams.add(nsid, func)
            return func

        return decorator

    @property
    def nsids(self) -> list[str]:
        return self.streams.nsids

    async def register_once(self, registered: Callable[[], None] = lambda: None) -> None:
        """Register the streams as private (``registered`` is called once the broker has
        accepted them) and serve them until the broker closes the connection. A refusal is
        raised as :class:`Refused`."""
        methods = Methods()
        self.streams.install(methods)
        nsids = self.nsids
        async with connect_unix(self.path, methods, request_timeout=None) as conn:
            try:
                try:
                    await conn.request(
                        "kiki/registerTools",
                        {
                            "tools": [],
                            "lexicons": self.lexicons,
                            "subscriptions": nsids,
                            "privateSubscriptions": nsids,
                        },
                    )
                except KikiError as exc:
                    raise Refused(exc) from None
                registered()
                log.info("registered %s (private) on the broker %s", ", ".join(nsids), self.path)
                await conn.wait_closed()
            finally:
                await self.streams.stop()

    async def keep_registered(self, backoff: RestartBackoff | None = None) -> None:
        """Stay registered until cancelled, as :meth:`ToolProvider.keep_registered` does: a
        broker that is not there, restarts or refuses is tried again after ``backoff``."""
        if not self.nsids:
            return
        backoff = backoff if backoff is not None else RestartBackoff()
        told: set[str] = set()
        while True:
            backoff.started()
            try:
                await self.register_once(lambda: backoff.ready(time.monotonic()))
            except Refused as refused:
                if str(refused.error) not in told:  # logged once per reason
                    told.add(str(refused.error))
                    log.warning("the broker refused %s: %s", ", ".join(self.nsids), refused.error)
            except (KikiError, OSError) as exc:
                log.debug("the broker %s is not reachable (%s)", self.path, exc)
            await asyncio.sleep(backoff.exited(time.monotonic()))


class Refused(Exception):
    """The broker refused the registration: ``error`` says why."""

    def __init__(self, error: KikiError) -> None:
        super().__init__(str(error))
        self.error = error
