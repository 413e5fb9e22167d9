"""asyncio layer of the D-Bus gateway: owns its bus name on the session bus, follows the
media players on it and offers them to the broker.

Its health answer is the D-Bus method ``dev.kiki.Service1.GetInfo() -> a{sv}`` at the object
path its declaration in :mod:`libkiki.constellation` names (``/dev/kiki/Gateway``), so ``busctl``
and ``kiki status`` can ask it (the values: :mod:`kiki_dbus_gateway.core`). Ready is only
signalled once the well-known name is owned and the players on the bus are listed, which is when
other bus clients can reach it. The broker may come later, go and come back: the tools are kept
registered in the background (:meth:`ToolProvider.keep_registered`), never a reason to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator

from dbus_fast import BusType, NameFlag, RequestNameReply
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError
from dbus_fast.service import ServiceInterface, method

from kiki_dbus_gateway.bus_tools import BusTools
from kiki_dbus_gateway.config import GatewayConfig
from kiki_dbus_gateway.core import info_variants
from kiki_dbus_gateway.dbus_calls import Replies
from kiki_dbus_gateway.media import Players
from kiki_dbus_gateway.mpris import MprisWatcher
from kiki_dbus_gateway.notify import Notifications
from kiki_dbus_gateway.notify_bus import NotifyBus
from kiki_dbus_gateway.notify_tools import add_notify_tools
from kiki_dbus_gateway.portal_bus import PortalBus
from kiki_dbus_gateway.portal_tools import add_portal_tools
from kiki_dbus_gateway.tools import make_provider
from libkiki.constellation import SERVICE_INTERFACE
from libkiki.errors import AddressInUse, NotFound, Unavailable
from libkiki.paths import TOOLS_SOCKET, socket_path
from libkiki.principals import Principals
from libkiki.service import ServiceContext

log = logging.getLogger(__name__)


class ServiceInfo(ServiceInterface):
    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(SERVICE_INTERFACE)
        self._ctx = ctx

    @method(name="GetInfo")
    def get_info(self) -> "a{sv}":  # type: ignore[valid-type]  # noqa: F722
        self._ctx.counters["requests"] += 1
        return info_variants(self._ctx.info())


@contextlib.asynccontextmanager
async def serve(ctx: ServiceContext) -> AsyncIterator[None]:
    config: GatewayConfig = ctx.config
    object_path = ctx.spec.object_path
    if object_path is None:
        raise NotFound(f"{ctx.name} declares no object path in libkiki.constellation")
    if not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
        raise Unavailable("no session bus: DBUS_SESSION_BUS_ADDRESS is not set")
    try:
        # Without unix fds: a message on a connection that negotiates them costs dbus-fast three
        # recvmsg calls to read rather than one recv. The portal calls that pass an fd (Trash)
        # open a connection of their own that does (fd_bus).
        bus = await MessageBus(bus_type=BusType.SESSION).connect()
    except (OSError, DBusError) as exc:
        raise Unavailable(f"cannot connect to the session bus: {exc}") from exc
    players = Players(config.max_players, ctx.counters)
    watcher = MprisWatcher(bus, players, config.call_timeout, ctx.counters)
    notifications = Notifications(config.notify_history)
    notify_bus = NotifyBus(bus, notifications, config.call_timeout, ctx.counters)
    portal = PortalBus(
        bus,
        config.call_timeout,
        config.portal_request_timeout,
        ctx.counters,
        fd_bus=lambda: MessageBus(bus_type=BusType.SESSION, negotiate_unix_fd=True).connect(),
    )
    registering: list[asyncio.Task[None]] = []
    bus_tools = BusTools(
        bus,
        object_path,
        socket_path(TOOLS_SOCKET),
        max_in_flight=config.max_in_flight,
        timeout=config.call_timeout,
        counters=ctx.counters,
    )
    replies = Replies(bus)
    try:
        replies.start()  # first: its handler takes the replies before the others see them
        bus.export(object_path, ServiceInfo(ctx))
        if config.bus_tools:
            bus_tools.start()
        reply = await bus.request_name(config.bus_name, NameFlag.DO_NOT_QUEUE)
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            raise AddressInUse(f"the bus name {config.bus_name} is owned by another process")
        await watcher.start()
        await notify_bus.start(monitor=config.notify_monitor)
        await portal.start()
        if config.broker_tools:
            provider = make_provider(players, watcher, config.events_interval)
            add_notify_tools(
                provider,
                notifications,
                notify_bus,
                app_name=config.notify_app_name,
                readers=Principals.parse(config.notify_readers, "notify_readers"),
                observe_stream=config.notify_observe_stream,
                max_events=config.notify_max_events,
                counters=ctx.counters,
            )
            add_portal_tools(
                provider, portal, max_events=config.notify_max_events, counters=ctx.counters
            )
            loop = asyncio.get_running_loop()
            registering.append(loop.create_task(provider.keep_registered()))
        ctx.status = f"owning {config.bus_name} on the session bus"
        yield
    finally:
        for task in registering:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await watcher.stop()
        await notify_bus.stop()
        portal.stop()
        await bus_tools.stop()
        await replies.stop()
        bus.disconnect()
        # The reader sees EOF when the bus connection closes; collect it so it is not reported
        # as an unretrieved exception.
        with contextlib.suppress(EOFError, OSError):
            await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
