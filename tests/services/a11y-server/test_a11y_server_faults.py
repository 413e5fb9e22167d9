"""A bug of ours while flushing subscribers costs them the update, not the requester its
connection: the server runs in this process (so the fault can be planted) on a real socket."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiki_a11y_server.config import A11yConfig
from kiki_a11y_server.desktop import Desktop
from kiki_a11y_server.server import serve
from kikitest.a11y_fixtures import form_tree
from libkiki.a11y.client import A11yClient
from libkiki.a11y.publisher import A11yPublisher
from libkiki.service import ServiceContext
from libkiki.sockets import Listeners
from libkiki.systemd import Notifier

pytestmark = pytest.mark.integration


async def test_a_failing_flush_is_counted_and_the_connections_live(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    monkeypatch.setenv("KIKI_RUNTIME_DIR", str(tmp_path))
    config = A11yConfig(broker_tools=False, policy_file=str(tmp_path / "none.toml"))
    ctx = ServiceContext("a11y-server", "0", Listeners(), Notifier(""), config=config)
    request.addfinalizer(ctx.listeners.close)  # not the garbage collector, in a later test

    def broken_take(self: Desktop, sub: object) -> list[bytes]:
        raise RuntimeError("planted")

    async with serve(ctx):
        path = tmp_path / "a11y.sock"
        async with A11yPublisher(path) as pub, A11yClient(path) as watcher:
            await watcher.subscribe()
            monkeypatch.setattr(Desktop, "take", broken_take)
            await pub.publish(form_tree(), root_id=1)  # answered; the flush to the watcher fails
            assert ctx.counters["internal_errors"] >= 1
            monkeypatch.undo()
            monkeypatch.setenv("KIKI_RUNTIME_DIR", str(tmp_path))
            # Both connections are still served.
            assert dict((await watcher.info()).counters)["internal_errors"] >= 1
            await pub.publish(form_tree(), root_id=1)
