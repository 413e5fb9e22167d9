"""Fixtures for the tests of libkiki.rpc over real Unix sockets (registered in
tests/conftest.py): a probe into the handlers, a socket path, a server running the probed
methods."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kikitest.rpc_peers import Probe, make_methods, running
from libkiki.rpc.server import RpcServer


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "rpc.sock"


@pytest.fixture
async def server(sock_path: Path, probe: Probe) -> AsyncIterator[RpcServer]:
    async with running(sock_path, make_methods(probe)) as srv:
        yield srv
