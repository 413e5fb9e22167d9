"""Which app an AT-SPI bus name belongs to, as the kernel says (not as the app says).

The accessibility bus knows each connection's process and user (``GetConnectionUnixProcessID``,
``GetConnectionUnixUser``: the bus daemon's own record, from ``SO_PEERCRED``), and the process's
cgroup gives its app id by the rule the a11y-server applies to its own peers
(:func:`libkiki.peer.app_id_from_cgroup`). The bridge names that app when it publishes the
app's tree; the server takes the name only from a publisher its policy trusts.
"""

from __future__ import annotations

import os
from pathlib import Path

from kiki_a11y_server.atspi.calls import Calls
from libkiki.a11y import wire
from libkiki.peer import app_id_from_cgroup

DBUS = "org.freedesktop.DBus"


async def app_of(calls: Calls, bus_name: str, proc: Path = Path("/proc")) -> wire.App | None:
    """The app behind ``bus_name`` (app id, pid, uid, unit), or None when it is another user's
    (the bridge publishes its own user's apps only) or its process is gone."""
    pid = await calls.bus_call("GetConnectionUnixProcessID", bus_name)
    uid = await calls.bus_call("GetConnectionUnixUser", bus_name)
    if uid != os.getuid():
        return None
    try:
        text = (proc / str(pid) / "cgroup").read_text()
    except OSError:
        return None
    app_id, unit, _ = app_id_from_cgroup(text, uid)
    return wire.App(0, app_id or f"pid-{pid}", pid, uid, unit or "")
