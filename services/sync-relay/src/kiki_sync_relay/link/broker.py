"""The device link's one connection to the tool broker: the sources of the device state, and
the calls intents make.

While connected it follows the broker's streams (the a11y server's screen changes, playback,
notification events, the audit log, providers coming and going), lists the tools when they
change and reads the sensors once a second, each into the :class:`~.state.DeviceState`. A
stream whose provider is gone (``waiting``), or that cannot be opened, marks its key stale
(its value kept) and is opened again after a growing wait; losing the broker marks every key
stale and connects again after a growing wait (:class:`libkiki.backoff.RestartBackoff`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from kiki_sync_relay.link.state import KEYS, MAX_SENSORS, DeviceState
from libkiki.backoff import RestartBackoff
from libkiki.errors import KikiError, NotFound, PeerGone, PermissionDenied, Unavailable
from libkiki.streams_client import Event, Lost, Status
from libkiki.tools import ToolClient

log = logging.getLogger(__name__)

A11Y: Final = "dev.kiki.a11y.subscribeChanges"
PLAYBACK: Final = "dev.kiki.media.subscribePlayback"
NOTIFY: Final = "dev.kiki.notify.subscribeEvents"
# Other apps' notifications: served only when the gateway's notify_observe_stream is on (and
# the policy lets the relay subscribe); its absence marks nothing stale.
OBSERVED: Final = "dev.kiki.notify.subscribeObserved"
AUDIT: Final = "dev.kiki.tools.subscribeAudit"
PROVIDERS: Final = "dev.kiki.tools.subscribeProviders"
LIST_PROVIDERS: Final = "dev.kiki.tools.listProviders"
SENSOR_LIST: Final = "dev.kiki.sensor.list"
SENSOR_READ: Final = "dev.kiki.sensor.read"
SENSOR_EVERY = 1.0  # seconds between two readings of the sensors
SENSOR_LIST_EVERY = 30.0  # seconds between two listings of them
STREAM_QUEUE = 256
# Seconds a stream that starts again may stay silent before what it said before is forgotten
# (it has nothing to tell: no app, no player).
QUIET = 1.0  # items one stream holds while the link is behind (the oldest go first)


class BrokerLink:
    """Keeps ``state`` fed from the broker at ``path`` until cancelled (:meth:`run`)."""

    def __init__(
        self,
        state: DeviceState,
        path: Path | None,
        *,
        tools: list[str],
        backoff_max: float = 30.0,
        call_timeout: float = 30.0,
    ) -> None:
        self.state = state
        self.path = path
        self.tools = tools
        self.backoff_max = backoff_max
        self.call_timeout = call_timeout
        self.client: ToolClient | None = None
        self.listed: set[str] = set()  # every tool the broker listed last
        self.connects = 0
        self.failures = 0
        self.last_error = ""
        self._tools_changed = asyncio.Event()
        # Connected, and the tools listed on this connection: what deciding an intent needs.
        self._ready = asyncio.Event()

    async def ready(self, within: float) -> bool:
        """Wait (at most ``within`` s) until the broker is connected and its tools known."""
        try:
            async with asyncio.timeout(within):
                await self._ready.wait()
        except TimeoutError:
            return False
        return True

    # -- calls for intents ----------------------------------------------------------------------

    async def call(
        self, tool: str, arguments: dict[str, Any], *, key: str, on_behalf_of: Mapping[str, str]
    ) -> Any:
        """Call ``tool`` for a remote person; :class:`Unavailable` while there is no broker."""
        client = self.client
        if client is None:
            raise Unavailable("the device link has no connection to the tool broker now")
        return await client.call(
            tool,
            arguments,
            timeout=self.call_timeout,
            idempotency_key=key,
            on_behalf_of=on_behalf_of,
        )

    # -- the connection -------------------------------------------------------------------------

    async def run(self) -> None:
        backoff = RestartBackoff(initial=0.5, maximum=max(0.5, self.backoff_max))
        while True:
            backoff.started()
            try:
                async with ToolClient(self.path, timeout=self.call_timeout) as client:
                    client.list_changed = self._list_changed
                    self.client = client
                    self.connects += 1
                    backoff.ready(time.monotonic())
                    log.info("the device link is connected to the tool broker")
                    await self._follow(client)
            except (KikiError, OSError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
            finally:
                self.client = None
                self._ready.clear()
                for key in KEYS:
                    self.state.mark(key, True)
            self.failures += 1
            log.warning("the device link lost the tool broker: %s", self.last_error)
            await asyncio.sleep(backoff.exited(time.monotonic()))

    async def _list_changed(self) -> None:
        self._tools_changed.set()

    async def _follow(self, client: ToolClient) -> None:
        """Until the connection is lost: raises the first task's error (a PeerGone, mostly)."""
        try:
            await self._tasks(client)
        except* (KikiError, OSError) as group:
            raise _first(group) from None

    async def _tasks(self, client: ToolClient) -> None:
        state = self.state
        async with asyncio.TaskGroup() as group:
            group.create_task(self._gone(client))
            group.create_task(
                self._stream(client, A11Y, "screen", state.screen_changed, state.screen_reset)
            )
            group.create_task(
                self._stream(client, PLAYBACK, "nowPlaying", state.playback, state.players_reset)
            )
            group.create_task(self._stream(client, NOTIFY, "notifications", state.notification))
            group.create_task(self._stream(client, OBSERVED, None, state.notification))
            group.create_task(self._stream(client, AUDIT, "calls", state.audit))
            group.create_task(self._stream(client, PROVIDERS, None, self._provider_event))
            group.create_task(self._list_tools(client))
            group.create_task(self._sensors(client))

    @staticmethod
    async def _gone(client: ToolClient) -> None:
        await client.connection.wait_closed()
        raise PeerGone("the tool broker closed the connection")

    def _provider_event(self, _: Any) -> None:
        self._tools_changed.set()

    async def _stream(
        self,
        client: ToolClient,
        nsid: str,
        key: str | None,
        take: Callable[[Any], None],
        reset: Callable[[], None] | None = None,
    ) -> None:
        """Follow ``nsid`` into ``take`` for as long as the connection lasts; ``key`` is stale
        while the stream is not live. A stream that starts again (opened anew, its provider
        back, messages lost) tells everything again: ``reset`` forgets what it said before,
        at its first message (or after :data:`QUIET` s without one), so a stream opened as the
        broker goes away leaves the last value in place."""
        backoff = RestartBackoff(initial=0.5, maximum=max(0.5, self.backoff_max))
        while True:
            backoff.started()
            # A label no one else uses: the upstream tells this subscriber everything first.
            params = {"session": secrets.token_hex(8)} if reset is not None else {}
            sub = client.subscribe(nsid, params=params, max_queue=STREAM_QUEUE)
            try:
                async with sub:
                    live = sub.state == "live"
                    self._live(key, live)
                    backoff.ready(time.monotonic())
                    pending = reset is not None
                    items = aiter(sub)
                    while True:
                        try:
                            async with asyncio.timeout(QUIET if pending and live else None):
                                item = await anext(items)
                        except TimeoutError:
                            pending = False
                            if reset is not None:
                                reset()
                            continue
                        except StopAsyncIteration:
                            break
                        if isinstance(item, Event):
                            if pending and reset is not None:
                                pending = False
                                reset()
                            take(item.message)
                        elif isinstance(item, Status):
                            live = item.state == "live"
                            self._live(key, live)
                            pending = pending or (live and reset is not None)
                        elif isinstance(item, Lost) and reset is not None:
                            break  # a change was missed: open it again to be told whole
            except PeerGone:
                raise
            except KikiError as exc:
                log.info("the device link's stream %s: %s", nsid, exc)
            self._live(key, False)
            if sub.ended is not None and sub.ended.reason == "shutdown":
                # The broker is stopping: nothing to open again until it is back.
                await client.connection.wait_closed()
            await asyncio.sleep(backoff.exited(time.monotonic()))

    def _live(self, key: str | None, live: bool) -> None:
        if key is not None:
            self.state.mark(key, not live)

    async def _list_tools(self, client: ToolClient) -> None:
        while True:
            self._tools_changed.clear()
            try:
                names = [t["name"] for t in await client.list() if isinstance(t.get("name"), str)]
                offered = await self._registered(client)
            except PeerGone:
                raise
            except KikiError as exc:
                log.info("the device link could not list the tools: %s", exc)
                self.state.mark("tools", True)
                await asyncio.sleep(1.0)
                continue
            self.listed = set(names)
            self.state.tools_listed(sorted(self.listed | offered), self.tools)
            self.state.mark("tools", False)
            self._ready.set()
            await self._tools_changed.wait()
            # Providers come in bursts (a constellation starting): list once for the burst.
            await asyncio.sleep(0.2)

    async def _registered(self, client: ToolClient) -> set[str]:
        """Every tool the providers registered, whoever may call it: what the device offers
        sessions. ``tools/list`` shows only what the relay may call as itself, while an
        intent's call is decided by the broker for its person. Refused the listing, the
        relay's own list stands alone."""
        try:
            answer = await client.call(LIST_PROVIDERS, {})
        except PermissionDenied as exc:
            log.info("the device link may not list the providers: %s", exc)
            return set()
        return {
            tool["nsid"]
            for provider in answer.get("providers", [])
            if isinstance(provider, dict)
            for tool in provider.get("tools", [])
            if isinstance(tool, dict) and isinstance(tool.get("nsid"), str)
        }

    async def _sensors(self, client: ToolClient) -> None:
        sensors: list[dict[str, Any]] = []
        listed = float("-inf")
        while True:
            if SENSOR_LIST not in self.listed:  # no sensor publisher (yet): nothing to read
                self.state.mark("sensors", True)
                await asyncio.sleep(SENSOR_EVERY)
                continue
            try:
                if time.monotonic() - listed > SENSOR_LIST_EVERY:
                    answer = await client.call(SENSOR_LIST, {})
                    sensors = [s for s in answer.get("sensors", []) if isinstance(s, dict)]
                    sensors = sensors[:MAX_SENSORS]
                    listed = time.monotonic()
                readings = []
                for sensor in sensors:
                    read = await client.call(SENSOR_READ, {"sensor": sensor["id"], "count": 1})
                    for sample in read.get("samples", [])[-1:]:
                        readings.append(_reading(sensor, sample))
                self.state.sensors_read(readings)
                self.state.mark("sensors", False)
            except PeerGone:
                raise
            except KikiError as exc:
                if not isinstance(exc, NotFound) and "sensors" not in self.state.stale:
                    log.info("the device link could not read the sensors: %s", exc)
                self.state.mark("sensors", True)
                listed = float("-inf")
                await asyncio.sleep(SENSOR_LIST_EVERY / 6)
                continue
            await asyncio.sleep(SENSOR_EVERY)


def _first(group: BaseExceptionGroup[Exception]) -> Exception:
    while isinstance(first := group.exceptions[0], BaseExceptionGroup):
        group = first
    return first


def _reading(sensor: dict[str, Any], sample: dict[str, Any]) -> dict[str, Any]:
    """A sensor's latest sample as ``#sensorReading``: the sample, and what reads it."""
    reading = {"sensor": sensor.get("id"), "kind": sensor.get("kind"), "unit": sensor.get("unit")}
    reading["scale"] = sensor.get("scale", 0)
    reading.update({k: v for k, v in sample.items() if k in ("seq", "timestampNs", "values")})
    return reading
