"""Who is on the other end of a Unix socket: ``SO_PEERCRED`` plus the app id from its cgroup.

Policy decisions use this identity, never a claim in the payload. The kernel fills in
``SO_PEERCRED`` at ``connect()``; the cgroup is read from ``/proc/<pid>/cgroup`` right away, while
the peer is known to be alive.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

_UCRED = struct.Struct("3i")

# A unit's cgroup name: kiki-<service>.service, app-<id>.service, app-<id>-<random>.scope,
# app-<launcher>-<id>@<instance>.service (the desktop-entry conventions of systemd's
# "Desktop Environment Integration" document).
_APP_UNIT = re.compile(
    r"^app-(?:[^-]+-)??(?P<id>[A-Za-z0-9_.]+?)(?:@[^.]*)?(?:-[0-9a-f]+)?\.(?:service|scope)$"
)
_KIKI_UNIT = re.compile(r"^(?P<id>kiki-[a-z0-9-]+)(?:@[^.]*)?\.(?:service|scope)$")


@dataclass(frozen=True, slots=True)
class PeerCred:
    pid: int
    uid: int
    gid: int
    app_id: str | None = None
    unit: str | None = None

    def describe(self) -> str:
        who = f"uid={self.uid} pid={self.pid}"
        return f"{who} app={self.app_id}" if self.app_id else who


def app_id_from_cgroup(text: str) -> tuple[str | None, str | None]:
    """Return ``(app_id, unit)`` from the contents of ``/proc/<pid>/cgroup``.

    Only the unified hierarchy line (``0::``) is used; the innermost ``*.service`` / ``*.scope``
    component names the unit.
    """
    path = None
    for line in text.splitlines():
        if line.startswith("0::"):
            path = line[3:]
            break
    if not path:
        return None, None
    for part in reversed(path.strip("/").split("/")):
        if not part.endswith((".service", ".scope")):
            continue
        if m := _APP_UNIT.match(part):
            return m.group("id"), part
        if m := _KIKI_UNIT.match(part):
            return m.group("id"), part
        return None, part
    return None, None


def peer_cred(sock: socket.socket, proc: Path = Path("/proc")) -> PeerCred:
    """The peer's credentials; ``OSError`` if ``sock`` is not a connected AF_UNIX socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    app_id = unit = None
    if pid > 0:
        # The peer may have exited already, or /proc may be hidden from us (ProtectProc=).
        with contextlib.suppress(OSError):
            app_id, unit = app_id_from_cgroup((proc / str(pid) / "cgroup").read_text())
    return PeerCred(pid=pid, uid=uid, gid=gid, app_id=app_id, unit=unit)
