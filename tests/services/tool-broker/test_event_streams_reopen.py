"""A waiting subscription reopened on a different provider is checked against the policy again:
a caller allowed to subscribe to its own user's stream is not thereby allowed to subscribe to
the same NSID from another user's provider. The broker runs in this process (with a policy of
its own) on a real socket; the caller and its provider are a second Unix user."""

from __future__ import annotations

import asyncio
import pwd
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from kiki_tool_broker.audit import AuditLog
from kiki_tool_broker.config import BrokerConfig
from kiki_tool_broker.core import BrokerCore
from kiki_tool_broker.policy import Policy
from kiki_tool_broker.schemas import Catalog
from kiki_tool_broker.server import Broker
from kikitest import until
from kikitest.broker_lexicons import TICKS, TICKS_LEXICON
from kikitest.second_user import open_to_others, run_as
from libkiki.errors import PermissionDenied
from libkiki.rpc import serve_unix
from libkiki.service import ServiceContext
from libkiki.sockets import Listeners
from libkiki.systemd import Notifier
from libkiki.tools import Event, Status, StreamContext, ToolClient, ToolProvider

pytestmark = pytest.mark.integration


@asynccontextmanager
async def broker_on(sockdir: Path, policy: Policy, audit: AuditLog) -> AsyncIterator[Path]:
    config = BrokerConfig(call_timeout=5)
    ctx = ServiceContext("tool-broker", "0", Listeners([]), Notifier(""), config)
    core = BrokerCore(config, Catalog.load(), policy, version="0")
    broker = Broker(ctx, core, audit)
    core.register_own(broker.tools.names)
    path = sockdir / "tools.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        sock.listen()
        open_to_others(sockdir, path)
        async with serve_unix(sock, broker.methods, on_disconnect=broker.connection_lost):
            yield path
        await broker.forwarder.finish()


def ticks_provider(path: Path) -> ToolProvider:
    provider = ToolProvider(path, lexicons=[TICKS_LEXICON])

    @provider.subscription(TICKS)
    async def ticks(params: dict[str, Any], stream: StreamContext) -> AsyncIterator[dict[str, Any]]:
        yield {"n": 0}
        await asyncio.Event().wait()

    return provider


async def test_a_waiting_subscription_reopened_on_another_users_provider_is_denied(
    sockdir: Path, tmp_path: Path, attacker: pwd.struct_passwd
) -> None:
    # Nobody is in the default group: subscribing is the provider's own user's (or root's).
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(
        'default_group = "kiki-test-no-such-group"\n'
        "[[provide]]\n"
        f'principals = ["uid:{attacker.pw_uid}"]\n'
        'tools = ["org.example.test.*"]\n'
    )
    audit = AuditLog(tmp_path)
    shared = sockdir / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # the second user leaves its marker here
    marker = shared / "waiting"
    async with broker_on(sockdir, Policy.load(policy_file), audit) as path:

        async def subscriber() -> dict[str, Any]:
            async with ToolClient(path) as client:
                stream = client.subscribe(TICKS)
                async with ticks_provider(path).connect():
                    await stream.open()  # its own user's stream: allowed
                    while not isinstance(await anext(stream), Event):
                        pass
                # Its provider left: the subscription waits for another.
                while (item := await anext(stream)) != Status("waiting", "providerGone", 1):
                    assert isinstance(item, Status), item
                marker.write_text("")
                try:
                    async for item in stream:
                        if isinstance(item, Event):
                            return {"event": item.message}
                except PermissionDenied:
                    assert stream.ended is not None
                    return {"ended": stream.ended.reason}
                return {"ended": None}

        child = asyncio.ensure_future(asyncio.to_thread(run_as, attacker, subscriber))
        await until(marker.exists, "the subscriber waiting", within=30)
        async with ticks_provider(path).connect():  # root's provider of the same NSID
            async with asyncio.timeout(30):
                result = await child
    assert result["ended"] == "denied", result
    audit.close()
