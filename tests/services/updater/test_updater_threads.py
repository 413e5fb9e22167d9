"""The updater's event loop never reads the store: an update's remote is found in the worker."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from kiki_updater.config import UpdaterConfig
from kiki_updater.signing import generate_keypair
from kiki_updater.store import Store
from kiki_updater.updater import Updater
from kikitest.ostree_fixtures import publish_versions

pytestmark = pytest.mark.unit

APP = "org.example.player"
SECRET, PUBLIC = generate_keypair()


def test_an_update_reads_the_store_only_in_a_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    published = tmp_path / "published"
    publish_versions(published, tmp_path, APP, ["1.0"], secret=SECRET)
    config = UpdaterConfig.model_validate(
        {
            "root": str(tmp_path / "device"),
            "broker_tools": False,
            "remotes": {"origin": {"url": str(published), "ed25519_keys": [PUBLIC]}},
        }
    )
    updater = Updater(config)
    updater.ops.health = None
    updater.ops.install_step = None
    # Through the server too: libostree's pulls run in a worker with a GLib context of their
    # own (gio.in_own_context); one made on the main thread aborted the process in CI's run.
    first = asyncio.run(updater.install(None, {"appId": APP, "remote": "origin"}, update=False))
    assert first.state == "succeeded", first
    publish_versions(published, tmp_path / "next", APP, ["1.1"], secret=SECRET)
    on_loop: list[str] = []
    deployed = Store.deployed

    def watched(self: Store, *args: Any) -> Any:
        if threading.current_thread() is threading.main_thread():
            on_loop.append("deployed")
        return deployed(self, *args)

    monkeypatch.setattr(Store, "deployed", watched)
    op = asyncio.run(updater.install(None, {"appId": APP}, update=True))
    assert op.state == "succeeded", op
    assert on_loop == []
