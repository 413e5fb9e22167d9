"""Descriptors a peer passes (``SCM_RIGHTS``) on a connection's Unix socket.

:meth:`libkiki.rpc.Connection.receive_fds` uses this while the connection's reading is paused:
the kernel hands descriptors only to a ``recvmsg`` that makes room for them and closes them on
any other read, so the transport's own reads (plain ``recv``) never accept any, and a peer
cannot pile them up in our process.
"""

from __future__ import annotations

import array
import asyncio
import os
import socket
from typing import Final

from libkiki.errors import InvalidRequest, PeerGone

__all__ = ["receive_fds"]

_FD_SIZE: Final = array.array("i").itemsize


async def receive_fds(fileno: int, size: int, max_fds: int) -> tuple[bytes, list[int]]:
    """Wait until the socket ``fileno`` is readable, then read up to ``size`` bytes and the
    descriptors attached to them (close-on-exec; the caller owns them).

    ``fileno`` is duplicated first: the event loop lets no one else watch a descriptor a
    transport has registered. Raises :class:`~libkiki.errors.PeerGone` if the peer left
    (nothing to read) and :class:`~libkiki.errors.InvalidRequest` if it attached more than
    ``max_fds`` (the kernel closes the extra ones; those received are closed here).
    """
    if size < 1 or max_fds < 1:
        raise ValueError("size and max_fds must be 1 or more")
    loop = asyncio.get_running_loop()
    with socket.socket(fileno=os.dup(fileno)) as sock:
        sock.setblocking(False)
        while True:
            try:
                return _read(sock, size, max_fds)
            except (BlockingIOError, InterruptedError):
                pass
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(sock.fileno(), _wake, ready)
            try:
                await ready
            finally:
                loop.remove_reader(sock.fileno())


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


def _read(sock: socket.socket, size: int, max_fds: int) -> tuple[bytes, list[int]]:
    data, ancillary, flags, _ = sock.recvmsg(
        size, socket.CMSG_SPACE(max_fds * _FD_SIZE), socket.MSG_CMSG_CLOEXEC
    )
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(array.array("i", payload[: len(payload) - len(payload) % _FD_SIZE]))
    if flags & socket.MSG_CTRUNC or len(fds) > max_fds:
        for fd in fds:
            os.close(fd)
        raise InvalidRequest(f"more than {max_fds} descriptors were passed")
    if not data:
        for fd in fds:
            os.close(fd)
        raise PeerGone("the peer left")
    return data, fds
