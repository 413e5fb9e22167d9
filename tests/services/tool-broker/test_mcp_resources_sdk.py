"""The official MCP Python SDK subscribes to event streams as resources, through `kiki mcp`.

Handshake era: resources/subscribe, notifications/resources/updated, resources/read. 2026-07-28:
a subscriptions/listen stream with resourceSubscriptions. The stream used is the broker's own
audit stream, so that a tool call made by the same client is the event it sees.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from mcp import Client, StdioServerParameters
from mcp import types as mt
from mcp.client.subscriptions import ResourceUpdated
from mcp.shared.exceptions import MCPError

from kikitest import VENV_BIN

pytestmark = [
    pytest.mark.interop,
    # The handshake era's resources/subscribe is what is tested here; the SDK warns that
    # 2026-07-28 dropped it.
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]

AUDIT_NSID = "dev.kiki.tools.subscribeAudit"
AUDIT = f"kiki-stream://{AUDIT_NSID}"
GET_INFO = "dev.kiki.service.getInfo"


def bridge(path: Path) -> StdioServerParameters:
    return StdioServerParameters(
        command=str(VENV_BIN / "kiki"), args=["mcp", "--socket", str(path)]
    )


def items(result: mt.ReadResourceResult) -> list[dict[str, Any]]:
    [content] = result.contents
    assert isinstance(content, mt.TextResourceContents)
    assert content.mime_type == "application/json"
    body = orjson.loads(content.text)
    assert body["nsid"] == AUDIT_NSID
    found: list[dict[str, Any]] = body["items"]
    return found


def calls_of(found: list[dict[str, Any]], tool: str) -> list[dict[str, Any]]:
    return [i["message"] for i in found if "seq" in i and i["message"]["tool"] == tool]


async def test_official_sdk_subscribes_reads_and_unsubscribes(broker: tuple[Path, Any]) -> None:
    path, _ = broker
    updated: asyncio.Queue[str] = asyncio.Queue()

    async def on_message(message: Any) -> None:
        if isinstance(message, mt.ResourceUpdatedNotification):
            updated.put_nowait(message.params.uri)

    client = Client(bridge(path), mode="legacy", message_handler=on_message)
    async with asyncio.timeout(60), client:
        assert client.session.protocol_version == "2025-11-25"
        caps = client.server_capabilities
        assert caps is not None
        assert caps.resources is not None
        assert caps.resources.subscribe is True
        templates = await client.list_resource_templates()
        by_name = {t.name: t for t in templates.resource_templates}
        assert by_name[AUDIT_NSID].uri_template == AUDIT
        await client.subscribe_resource(AUDIT)
        # The subscription's own audit line is the first message: one updated for it.
        assert await updated.get() == AUDIT
        await client.call_tool(GET_INFO, {})
        await client.call_tool(GET_INFO, {})
        found = items(await client.read_resource(AUDIT, cache_mode="bypass"))
        assert [i["seq"] for i in found if "seq" in i] == list(range(1, len(found)))
        # Both calls were written before the read was answered, and only one updated came.
        assert len(calls_of(found, GET_INFO)) == 2
        assert updated.empty()
        await client.call_tool(GET_INFO, {})
        assert await updated.get() == AUDIT
        found = items(await client.read_resource(AUDIT, cache_mode="bypass"))
        assert len(calls_of(found, GET_INFO)) == 1
        await client.unsubscribe_resource(AUDIT)
        await client.call_tool(GET_INFO, {})
        assert items(await client.read_resource(AUDIT, cache_mode="bypass")) == []


async def test_official_sdk_listens_to_a_resource(broker: tuple[Path, Any]) -> None:
    path, _ = broker
    async with asyncio.timeout(60), Client(bridge(path), mode="auto") as client:
        assert client.session.protocol_version == "2026-07-28"
        templates = await client.list_resource_templates()
        assert AUDIT_NSID in {t.name for t in templates.resource_templates}
        async with client.listen(resource_subscriptions=[AUDIT]) as sub:
            assert sub.honored.resource_subscriptions == [AUDIT]
            # Its subscribe line is queued before the acknowledgement; told after it.
            assert await anext(sub) == ResourceUpdated(AUDIT)
            found = items(await client.read_resource(AUDIT, cache_mode="bypass"))
            assert found[-1]["message"]["event"] == "subscribe"
            await client.call_tool(GET_INFO, {})
            assert await anext(sub) == ResourceUpdated(AUDIT)
            found = items(await client.read_resource(AUDIT, cache_mode="bypass"))
            assert len(calls_of(found, GET_INFO)) == 1
        # The stream is closed: so is its subscription (the read is answered after the
        # cancellation, on the same connection, so it is gone by then).
        await client.call_tool(GET_INFO, {})
        result = await client.read_resource(AUDIT, cache_mode="bypass")
        [content] = result.contents
        assert isinstance(content, mt.TextResourceContents)
        assert orjson.loads(content.text)["subscribed"] is False


async def test_official_sdk_is_refused_by_the_policy(sockdir: Path, spawn_service: Any) -> None:
    (sockdir / "etc").mkdir()
    (sockdir / "etc" / "tool-policy.toml").write_text(
        f'[[deny]]\nprincipals = ["uid:{os.getuid()}"]\ntools = ["dev.kiki.tools.subscribe*"]\n'
        'access = ["subscribe"]\n'
    )
    _, notes = spawn_service("tool-broker")
    notes.wait_for("READY")
    path = sockdir / "tools.sock"
    async with asyncio.timeout(60):
        async with Client(bridge(path), mode="legacy") as client:
            templates = await client.list_resource_templates()
            assert AUDIT_NSID not in {t.name for t in templates.resource_templates}
            with pytest.raises(MCPError) as info:
                await client.subscribe_resource(AUDIT)
            assert info.value.error.code == -32003
        # 2026-07-28: a URI it may not subscribe to is left out of the honored filter.
        async with (
            Client(bridge(path), mode="auto") as client,
            client.listen(resource_subscriptions=[AUDIT]) as sub,
        ):
            assert not sub.honored.resource_subscriptions
