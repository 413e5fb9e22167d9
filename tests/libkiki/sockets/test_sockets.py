"""Binding by hand never steals a live socket and replaces a stale one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from libkiki.errors import AddressInUse, KikiError
from libkiki.sockets import Listeners, bind_tcp, bind_unix
from libkiki.systemd import ListenFd

pytestmark = pytest.mark.integration


def test_bind_creates_socket_with_mode(sockdir: Path) -> None:
    sock = bind_unix(sockdir / "sub" / "a.sock", mode=0o660)
    try:
        assert (os.stat(sockdir / "sub" / "a.sock").st_mode & 0o777) == 0o660
    finally:
        sock.close()


def test_live_socket_is_not_stolen(sockdir: Path) -> None:
    path = sockdir / "a.sock"
    first = bind_unix(path)
    try:
        with pytest.raises(AddressInUse, match="in use by another running process"):
            bind_unix(path)
        assert path.exists()
    finally:
        first.close()


def test_stale_socket_from_a_killed_process_is_replaced(sockdir: Path) -> None:
    path = sockdir / "a.sock"
    # A real process binds and is SIGKILLed, leaving its socket file behind.
    code = (
        "import socket,os,signal;s=socket.socket(socket.AF_UNIX);"
        f"s.bind({str(path)!r});s.listen();os.kill(os.getpid(),signal.SIGKILL)"
    )
    subprocess.run([sys.executable, "-c", code], check=False, timeout=30)
    assert path.exists()
    sock = bind_unix(path)
    try:
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(path))
        client.close()
    finally:
        sock.close()


def test_non_socket_file_is_never_removed(sockdir: Path) -> None:
    path = sockdir / "a.sock"
    path.write_text("precious")
    with pytest.raises(KikiError, match="not a socket"):
        bind_unix(path)
    assert path.read_text() == "precious"


def test_tcp_address_in_use() -> None:
    first = bind_tcp("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        with pytest.raises(AddressInUse):
            bind_tcp("127.0.0.1", port)
    finally:
        first.close()


def test_listeners_prefer_activated_socket_by_name(sockdir: Path) -> None:
    activated = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    activated.bind(str(sockdir / "act.sock"))
    activated.listen()
    fd = activated.detach()
    listeners = Listeners([ListenFd(fd, "tools")])
    try:
        got = listeners.unix("tools", sockdir / "fallback.sock")
        assert got.fileno() == fd
        assert listeners.activated
        assert not (sockdir / "fallback.sock").exists()
    finally:
        listeners.close()
    # An activated socket's file belongs to the manager: closing does not remove it.
    assert (sockdir / "act.sock").exists()


def test_listeners_bind_by_hand_and_clean_up(sockdir: Path) -> None:
    listeners = Listeners([])
    listeners.unix("tools", sockdir / "tools.sock")
    assert (sockdir / "tools.sock").exists()
    listeners.close()
    assert not (sockdir / "tools.sock").exists()
