"""asyncio layer of the D-Bus gateway: owns its bus name on the session bus.

Its health answer is the D-Bus method ``dev.kiki.Service1.GetInfo() -> a{sv}`` at the object
path its declaration in :mod:`libkiki.constellation` names (``/dev/kiki/Gateway``), so ``busctl``
and ``kiki status`` can ask it (the values: :mod:`kiki_dbus_gateway.core`). Ready is only
signalled once the well-known name is owned, which is when other bus clients can reach it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator

from dbus_fast import BusType, NameFlag, RequestNameReply
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError
from dbus_fast.service import ServiceInterface, method

from kiki_dbus_gateway.config import GatewayConfig
from kiki_dbus_gateway.core import info_variants
from libkiki.constellation import SERVICE_INTERFACE
from libkiki.errors import AddressInUse, NotFound, Unavailable
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
        bus = await MessageBus(bus_type=BusType.SESSION).connect()
    except (OSError, DBusError) as exc:
        raise Unavailable(f"cannot connect to the session bus: {exc}") from exc
    try:
        bus.export(object_path, ServiceInfo(ctx))
        reply = await bus.request_name(config.bus_name, NameFlag.DO_NOT_QUEUE)
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            raise AddressInUse(f"the bus name {config.bus_name} is owned by another process")
        ctx.status = f"owning {config.bus_name} on the session bus"
        yield
    finally:
        bus.disconnect()
        # The reader sees EOF when the bus connection closes; collect it so it is not reported
        # as an unretrieved exception.
        with contextlib.suppress(EOFError, OSError):
            await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
