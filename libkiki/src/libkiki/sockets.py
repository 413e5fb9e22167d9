"""Listening sockets: taken from socket activation, or bound by hand without stealing.

Binding by hand follows what a careful daemon does with a path socket it finds already there:
connect to it first. If something answers, another live instance owns it and we refuse
(:class:`~libkiki.errors.AddressInUse`). If the connection is refused, the file is a leftover of
a crashed run and is replaced. Anything that is not a socket is never removed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
from pathlib import Path

from libkiki.errors import AddressInUse, KikiError
from libkiki.systemd import ListenFd, listen_fds

log = logging.getLogger(__name__)


def _is_live(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        # EAGAIN means the backlog is full: someone is listening.
        return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    else:
        return True
    finally:
        probe.close()


def bind_unix(path: Path, *, mode: int = 0o660, backlog: int = 128) -> socket.socket:
    """Bind and listen on a Unix stream socket at ``path``, replacing only a stale socket."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    try:
        st = path.lstat()
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise KikiError(f"{path} exists and is not a socket; refusing to replace it")
        if _is_live(path):
            raise AddressInUse(f"{path} is in use by another running process")
        log.info("replacing stale socket %s", path)
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(str(path))
        os.chmod(path, mode)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_tcp(host: str, port: int, *, backlog: int = 128) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise AddressInUse(f"{host}:{port} is in use by another process") from exc
            raise
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def socket_from_fd(fd: ListenFd) -> socket.socket:
    sock = socket.socket(fileno=fd.fd)
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise KikiError(f"activated fd {fd.fd} ({fd.name}) is not a stream socket")
    return sock


class Listeners:
    """The listening sockets of one service, from activation when present, else bound by hand.

    ``get(name, fallback)`` picks the activated socket named ``name`` (``FileDescriptorName=``,
    defaulting to the socket unit's name), or the only activated socket, or calls ``fallback``.
    """

    def __init__(self, activated: list[ListenFd] | None = None) -> None:
        self._activated = list(listen_fds() if activated is None else activated)
        self._was_activated = bool(self._activated)
        self._owned_paths: list[Path] = []
        self.sockets: list[socket.socket] = []

    @property
    def activated(self) -> bool:
        """Whether the service manager passed us sockets (rather than us binding them)."""
        return self._was_activated

    def unix(self, name: str, path: Path, *, mode: int = 0o660) -> socket.socket:
        sock = self._take(name)
        if sock is None:
            sock = bind_unix(path, mode=mode)
            self._owned_paths.append(path)
        self.sockets.append(sock)
        return sock

    def tcp(self, name: str, host: str, port: int) -> socket.socket:
        sock = self._take(name)
        if sock is None:
            sock = bind_tcp(host, port)
        self.sockets.append(sock)
        return sock

    def _take(self, name: str) -> socket.socket | None:
        if not self._activated:
            return None
        for i, fd in enumerate(self._activated):
            if fd.name == name or fd.name.removesuffix(".socket").endswith(name):
                return socket_from_fd(self._activated.pop(i))
        if len(self._activated) == 1:
            return socket_from_fd(self._activated.pop())
        return None

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()
        # Only remove files we bound; an activated socket belongs to systemd.
        for path in self._owned_paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._owned_paths.clear()
