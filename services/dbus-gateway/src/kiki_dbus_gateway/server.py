"""asyncio layer of the D-Bus gateway: owns ``dev.kiki.Gateway`` on the session bus.

Its health answer is the D-Bus method ``dev.kiki.Service1.GetInfo() -> a{sv}`` on
``/dev/kiki/Gateway`` (name, version, pid, uptimeSeconds, status, counters), so ``busctl`` and
``kiki status`` can ask it. Ready is only signalled once the well-known name is owned, which is
when other bus clients can reach it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from dbus_fast import BusType, NameFlag, RequestNameReply, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError
from dbus_fast.service import ServiceInterface, method

from libkiki.config import ServiceConfig
from libkiki.constellation import GATEWAY_BUS_NAME, GATEWAY_OBJECT_PATH, SERVICE_INTERFACE
from libkiki.errors import AddressInUse, Unavailable
from libkiki.service import ServiceContext

log = logging.getLogger(__name__)


class GatewayConfig(ServiceConfig):
    bus_name: str = GATEWAY_BUS_NAME


def info_variants(info: dict[str, Any]) -> dict[str, Variant]:
    return {
        "name": Variant("s", info["name"]),
        "version": Variant("s", info["version"]),
        "pid": Variant("u", info["pid"]),
        "uptimeSeconds": Variant("t", int(info["uptimeSeconds"])),
        "status": Variant("s", info["status"]),
        "statusText": Variant("s", info["statusText"]),
        "counters": Variant("a{sx}", {k: int(v) for k, v in info["counters"].items()}),
    }


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
    if not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
        raise Unavailable("no session bus: DBUS_SESSION_BUS_ADDRESS is not set")
    try:
        bus = await MessageBus(bus_type=BusType.SESSION).connect()
    except (OSError, DBusError) as exc:
        raise Unavailable(f"cannot connect to the session bus: {exc}") from exc
    try:
        bus.export(GATEWAY_OBJECT_PATH, ServiceInfo(ctx))
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
