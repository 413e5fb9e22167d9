"""``ServiceContext.listen()``: the socket a service's declaration names, activated or bound."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from libkiki.errors import NotFound
from libkiki.service import ServiceContext
from libkiki.sockets import Listeners
from libkiki.systemd import ListenFd, Notifier

pytestmark = pytest.mark.integration


def context(name: str, activated: list[ListenFd]) -> ServiceContext:
    return ServiceContext(
        name=name, version="0", listeners=Listeners(activated), notifier=Notifier("")
    )


@pytest.fixture
def runtime(sockdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.setenv("KIKI_RUNTIME_DIR", str(sockdir))
    return sockdir


def test_a_unix_service_binds_its_declared_socket_file(runtime: Path) -> None:
    ctx = context("updater", [])
    listener = ctx.listen()
    try:
        assert listener.getsockname() == str(runtime / "updater.sock")
        assert not ctx.listeners.activated
    finally:
        ctx.listeners.close()
    assert not (runtime / "updater.sock").exists()  # bound by hand: removed at close


def test_the_activated_socket_is_taken_by_its_declared_fdname(runtime: Path) -> None:
    """Of two passed sockets, the one named by the declaration's FileDescriptorName=."""
    other, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ctx = context(
        "tool-broker", [ListenFd(other.detach(), "relay"), ListenFd(ours.fileno(), "tools")]
    )
    try:
        assert ctx.listen().fileno() == ours.fileno()
        assert ctx.listeners.activated
        assert not (runtime / "tools.sock").exists()
    finally:
        ours.detach()
        ctx.listeners.close()


def test_a_tcp_service_binds_the_address_it_is_given(runtime: Path) -> None:
    ctx = context("sync-relay", [])
    try:
        host, port = ctx.listen(("127.0.0.1", 0)).getsockname()
        assert host == "127.0.0.1"
        assert port > 0
    finally:
        ctx.listeners.close()


@pytest.mark.parametrize("name", ["dbus-gateway", "no-such-service"])
def test_a_service_without_a_declared_socket_has_none_to_listen_on(name: str) -> None:
    with pytest.raises(NotFound):
        context(name, []).listen()
