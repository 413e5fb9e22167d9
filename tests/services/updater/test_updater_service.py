"""The updater serves its health request on the socket its declaration names, activated or
bound by hand."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from libkiki.constellation import GET_INFO
from libkiki.paths import UPDATER_SOCKET
from libkiki.rpc import connect_unix
from libkiki.sockets import bind_unix

pytestmark = pytest.mark.integration


async def get_info(path: Path) -> Any:
    async with connect_unix(path) as conn:
        return await conn.request(GET_INFO)


def test_activated_the_updater_answers_on_the_passed_socket(
    sockdir: Path, spawn_service: Any
) -> None:
    path = sockdir / "passed.sock"  # not its own file name: it must use what it is given
    listener = bind_unix(path)
    proc, notes = spawn_service("updater", listener=listener, fdname="updater")
    assert notes.wait_for("READY")["STATUS"] == f"serving {UPDATER_SOCKET} (activated)"
    info = asyncio.run(get_info(path))
    assert (info["name"], info["pid"], info["activated"]) == ("updater", proc.pid, True)
    assert not (sockdir / UPDATER_SOCKET).exists()
    listener.close()


def test_started_by_hand_the_updater_binds_its_declared_socket(
    sockdir: Path, spawn_service: Any
) -> None:
    proc, notes = spawn_service("updater")
    assert notes.wait_for("READY")["STATUS"] == f"serving {UPDATER_SOCKET} (bound)"
    info = asyncio.run(get_info(sockdir / UPDATER_SOCKET))
    assert (info["name"], info["activated"]) == ("updater", False)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert not (sockdir / UPDATER_SOCKET).exists()  # bound by hand: removed on the way out


def test_starting_imports_neither_gi_nor_cryptography(tmp_path: Path) -> None:
    # libostree through gi costs ~200 ms: the service's start (its modules, its Updater, a
    # recovery with no journal) must not pay it; the first operation does.
    script = (
        "import asyncio, sys\n"
        "import kiki_updater.__main__\n"
        "from kiki_updater.config import UpdaterConfig\n"
        "from kiki_updater.updater import Updater\n"
        f"updater = Updater(UpdaterConfig(root={str(tmp_path)!r}))\n"
        "async def start():\n"
        "    return await updater.recover(), await updater.listing()\n"
        "print(asyncio.run(start()))\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    said, modules = run.stdout.splitlines()
    assert said == "([], {'apps': [], 'agents': [], 'deployments': []})"
    assert {"gi", "cryptography", "libkiki.lexicon.install"} & set(modules.split()) == set()
