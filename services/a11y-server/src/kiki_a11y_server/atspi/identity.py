"""Which app an AT-SPI bus name belongs to, as the kernel says (not as the app says).

The accessibility bus knows each connection's process and user (``GetConnectionUnixProcessID``,
``GetConnectionUnixUser``: the bus daemon's own record, from ``SO_PEERCRED``), and the process's
cgroup gives its app id by the rule the a11y-server applies to its own peers
(:func:`libkiki.peer.process_app`, which also checks the process is still the one the bus
named). The bridge names that app when it publishes the app's tree; the server takes the name
only from a publisher its policy trusts.

An app of another user is never bridged: the accessibility bus admits root (and, by its
configuration, possibly others), and a tree the bridge publishes is its own user's, so bridging
a root GUI app would let whoever may act on the user's apps read and type into it.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from kiki_a11y_server.atspi.calls import Calls
from libkiki.a11y import wire
from libkiki.peer import process_app


class OtherUsersApp(Exception):
    """The bus name is another user's connection: not to be bridged."""

    def __init__(self, bus_name: str, uid: int) -> None:
        super().__init__(f"{bus_name} is uid {uid}'s, not the bridge's user's")
        self.uid = uid


async def app_of(
    calls: Calls, bus_name: str, proc: Path = Path("/proc"), *, own_uid: int | None = None
) -> wire.App | None:
    """The app behind ``bus_name``; see :func:`app_from`."""
    pid, uid = await asyncio.gather(
        calls.bus_call("GetConnectionUnixProcessID", bus_name),
        calls.bus_call("GetConnectionUnixUser", bus_name),
    )
    return app_from(bus_name, pid, uid, proc, own_uid=own_uid)


def app_from(
    bus_name: str, pid: int, uid: int, proc: Path = Path("/proc"), *, own_uid: int | None = None
) -> wire.App | None:
    """The app (app id, pid, uid, unit) of the connection the bus says is ``pid``'s, of
    ``uid``; None when its process is gone. :class:`OtherUsersApp` when ``uid`` is not the
    bridge's own (``own_uid``, by default the process's). An app without an app id is named
    by its pid alone (app id ""): the server names such a tree ``pid-<pid>``."""
    if uid != (os.getuid() if own_uid is None else own_uid):
        raise OtherUsersApp(bus_name, uid)
    try:
        app_id, unit, _ = process_app(pid, uid, proc)
    except ProcessLookupError:
        return None
    return wire.App(0, app_id or "", pid, uid, unit or "")
