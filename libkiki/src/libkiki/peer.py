"""Who is on the other end of a Unix socket: ``SO_PEERCRED`` plus the app id from its cgroup.

Policy decisions use this identity, never a claim in the payload. The kernel fixes the pid, uid,
gid (``SO_PEERCRED``) and supplementary groups (``SO_PEERGROUPS``) at ``connect()``. The app id
comes from ``/proc/<pid>/cgroup``, which is only the connecting process's while that process
lives: the peer's pidfd (``SO_PEERPIDFD``) is checked after the read, and a peer that has exited
by then (its pid may already name another process) is refused rather than given no app id.

An app id is only taken from where its name is as good as the uid behind it: the outermost unit
in ``/system.slice`` (systemd made it, for root), or a unit in the caller's own user manager
(``/user.slice/user-U.slice/user@U.service/...`` with U its uid). A user can give its own
processes any unit name there, so a user's app id tells apps of one user apart, and nothing
more; :attr:`PeerCred.app_user` says whose it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import signal
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from libkiki.admission import ACCEPT_BACKOFF, SHORTAGE

_UCRED = struct.Struct("3i")
# Not in Python's socket module; the values of asm-generic/socket.h (x86, arm, riscv, ...).
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)
_MAX_GROUPS = 256  # getsockopt's buffer in Python is at most 1024 bytes

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
    # The uid whose user manager runs the app (its app id is that user's word for it); None
    # for a system unit's app id, or no app id.
    app_user: int | None = None
    # Supplementary groups at connect() (SO_PEERGROUPS); the primary gid is ``gid``.
    groups: frozenset[int] = field(default_factory=frozenset)

    def describe(self) -> str:
        who = f"uid={self.uid} pid={self.pid}"
        return f"{who} app={self.app_id}" if self.app_id else who


def app_id_from_cgroup(text: str, uid: int) -> tuple[str | None, str | None, int | None]:
    """``(app_id, unit, app_user)`` from the contents of ``/proc/<pid>/cgroup`` of a process
    whose uid is ``uid``.

    Only the unified hierarchy line (``0::``) is used. In ``/system.slice`` the unit is the
    outermost ``*.service`` / ``*.scope`` (what a delegated service makes below it is its own
    business); in the user manager of ``uid`` it is the innermost one. Anywhere else (another
    user's manager, a container, ``init.scope``) there is no app id; ``unit`` still names the
    innermost unit, for people.
    """
    path = None
    for line in text.splitlines():
        if line.startswith("0::"):
            path = line[3:]
            break
    if not path:
        return None, None, None
    parts = path.strip("/").split("/")
    units = [p for p in parts if p.endswith((".service", ".scope"))]
    if not units:
        return None, None, None
    if parts[0] == "system.slice":  # only systemd makes what comes before the first unit
        return _app_id(units[0]), units[0], None
    if (
        len(parts) > 3
        and parts[:3] == ["user.slice", f"user-{uid}.slice", f"user@{uid}.service"]
        and units[-1] != parts[2]
    ):
        app_id = _app_id(units[-1])
        return app_id, units[-1], uid if app_id is not None else None
    return None, units[-1], None


def _app_id(unit: str) -> str | None:
    if m := _APP_UNIT.match(unit):
        return m.group("id")
    if m := _KIKI_UNIT.match(unit):
        return m.group("id")
    return None


def peer_cred(sock: socket.socket, proc: Path = Path("/proc"), *, app: bool = True) -> PeerCred:
    """The peer's credentials; ``OSError`` if ``sock`` is not a connected AF_UNIX socket, or
    if its peer has exited before its app id could be read (``ProcessLookupError``).

    ``app=False`` reads only what the kernel fixed at ``connect()`` (no app id, no liveness
    check): for a client, whose server's listening process may well have exited (socket
    activation, a launcher) and whose app id it has no use for.
    """
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    groups = _peer_groups(sock)
    if pid <= 0 or not app:
        return PeerCred(pid=pid, uid=uid, gid=gid, groups=groups)
    app_id, unit, app_user = process_app(pid, uid, proc, pidfd=_peer_pidfd(sock, pid))
    return PeerCred(pid, uid, gid, app_id, unit, app_user, groups)


def process_app(
    pid: int, uid: int, proc: Path = Path("/proc"), *, pidfd: int | None = None
) -> tuple[str | None, str | None, int | None]:
    """``(app_id, unit, app_user)`` of process ``pid`` of user ``uid``, verified alive:
    ``ProcessLookupError`` when it has exited before its cgroup was read (its pid may already
    name another process), or when ``pid`` now names another user's process.

    The one rule for both kinds of witness: a socket's peer (``pidfd`` from ``SO_PEERPIDFD``,
    which is the connecting process's whenever it is asked for) and a pid someone else vouches
    for (a D-Bus daemon's ``GetConnectionUnixProcessID``; call this right after its answer:
    the pidfd opened here pins whatever process has the pid by then). ``pidfd`` is closed.
    """
    if pidfd is None:
        pidfd = os.pidfd_open(pid)  # ProcessLookupError when there is none
    try:
        try:
            text = _read_small(f"{proc}/{pid}/cgroup")
        except OSError as exc:
            if exc.errno not in _HIDDEN:  # out of descriptors, say: identify() waits
                raise
            text = ""  # /proc is hidden from us (ProtectProc=): no app id, then
        # After the read: alive now, so the pid named the process while it was read. Signal 0
        # only asks; EPERM (another user's process, to a service's user) is an answer too.
        with contextlib.suppress(PermissionError):
            signal.pidfd_send_signal(pidfd, 0)
    finally:
        os.close(pidfd)
    return app_id_from_cgroup(text, uid)


# What reading another process's /proc entry fails with when /proc hides it from us, and
# ENAMETOOLONG: a cgroup nested past PATH_MAX (a user's own subtree, as deep as it likes),
# which the kernel will not print. Either way the process is no app.
_HIDDEN = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.ESRCH, errno.ENAMETOOLONG}


# The most of a process's cgroup file read: the kernel refuses a path past PATH_MAX itself
# (ENAMETOOLONG, below), so this only bounds what a future kernel or another /proc might give.
# Past it the innermost unit may be cut off, and the process is no app.
MAX_CGROUP_FILE: Final = 64 << 10


def _read_small(path: str, limit: int = MAX_CGROUP_FILE) -> str:
    """A small file's text, read with the system calls alone (no buffered file object: this
    runs for every connection a server accepts); ``""`` past ``limit`` bytes. Bytes that are
    not UTF-8 (a cgroup a user named) read as U+FFFD: never as ``/`` or ``.``, so the path
    keeps its shape; an app id (ASCII) and a Kiki unit name never contain it."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        size = 0
        while chunk := os.read(fd, 4096):
            size += len(chunk)
            if size > limit:
                return ""
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="replace")


async def identify(
    sock: socket.socket, *, backoff: float = ACCEPT_BACKOFF, tries: int = 50
) -> PeerCred:
    """:func:`peer_cred` for a server that has just accepted ``sock``: a transient shortage
    (the descriptor for the pidfd) is waited out, as the accept loop waits it out, instead of
    dropping a caller that could be served a moment later. The identity stays the one fixed at
    ``connect()``: the pidfd is the connecting process's whenever it is asked for."""
    for _ in range(tries - 1):
        try:
            return peer_cred(sock)
        except OSError as exc:
            if exc.errno not in SHORTAGE:
                raise
        await asyncio.sleep(backoff)
    return peer_cred(sock)


def _peer_groups(sock: socket.socket) -> frozenset[int]:
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * _MAX_GROUPS)
    except OSError as exc:
        if exc.errno != errno.ERANGE:
            raise
        raw = _getsockopt_long(sock.fileno(), SO_PEERGROUPS, 4 * _NGROUPS_MAX)
    return frozenset(struct.unpack(f"{len(raw) // 4}I", raw))


_NGROUPS_MAX = 65536  # the kernel's most supplementary groups for a process


def _getsockopt_long(fd: int, option: int, size: int) -> bytes:
    """getsockopt(2) into a buffer longer than Python's socket.getsockopt allows (1024)."""
    # Imported here: only a peer in more groups than fit in that buffer needs it.
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(size)
    length = ctypes.c_uint32(size)  # socklen_t
    if libc.getsockopt(fd, socket.SOL_SOCKET, option, buf, ctypes.byref(length)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return buf.raw[: length.value]


def _peer_pidfd(sock: socket.socket, pid: int) -> int:
    try:
        return sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # Linux 6.5-6.8 for a peer already reaped
            raise ProcessLookupError(errno.ESRCH, "the peer has exited") from None
        if exc.errno != errno.ENOPROTOOPT:
            raise
    # Linux before 6.5: the pid now, which narrows the gap but cannot close it.
    return os.pidfd_open(pid)
