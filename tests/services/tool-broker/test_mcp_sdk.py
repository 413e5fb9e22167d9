"""The official MCP Python SDK drives the broker through `kiki mcp` (stdio).

The tool it calls is served by a separate provider process, so the call crosses: the SDK client
-> `kiki mcp` (stdio) -> tools.sock -> broker -> provider process and back.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters
from mcp.client.subscriptions import ToolsListChanged
from mcp.shared.exceptions import MCPError

from kikitest import REPO, VENV_BIN

pytestmark = pytest.mark.interop

PROVIDER = """
import asyncio, sys
sys.path.insert(0, {tests!r})
from kikitest.broker_lexicons import ECHO, LEXICONS
from libkiki.tools import ToolProvider

provider = ToolProvider({path!r}, lexicons=LEXICONS)

@provider.tool(ECHO)
async def echo(args, call):
    return {{"text": args["text"].upper(), "caller": call.caller}}

async def main():
    async with provider.connect():
        print("registered", flush=True)
        await provider.serve_forever()

asyncio.run(main())
"""


@pytest.fixture
def provider_process(broker: tuple[Path, Any]) -> Iterator[Path]:
    path, _ = broker
    script = PROVIDER.format(tests=str(REPO / "tests"), path=str(path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "registered\n"
    yield path
    proc.kill()
    proc.wait(timeout=10)
    proc.stdout.close()


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_official_sdk_lists_and_calls_through_kiki_mcp(
    provider_process: Path, mode: str
) -> None:
    params = StdioServerParameters(
        command=str(VENV_BIN / "kiki"), args=["mcp", "--socket", str(provider_process)]
    )
    async with asyncio.timeout(60), Client(params, mode=mode) as client:
        # "auto" discovers the current stateless revision; "legacy" does the initialize handshake.
        expected = "2026-07-28" if mode == "auto" else "2025-11-25"
        assert client.session.protocol_version == expected
        # Who answered: initialize's serverInfo, or (2026-07-28) discover's _meta stamp.
        assert client.server_info is not None
        assert client.server_info.name == "kiki-tool-broker"
        tools = await client.list_tools()
        by_name = {t.name: t for t in tools.tools}
        echo = by_name["org.example.test.echo"]
        assert echo.input_schema["required"] == ["text"]
        assert by_name["dev.kiki.service.getInfo"].annotations is not None
        assert by_name["dev.kiki.service.getInfo"].annotations.read_only_hint is True
        result = await client.call_tool("org.example.test.echo", {"text": "hello"})
        assert result.is_error is False
        assert result.structured_content is not None
        assert result.structured_content["text"] == "HELLO"
        assert result.content[0].type == "text"
        # The provider saw the bridge's kernel identity, not anything the SDK sent.
        assert result.structured_content["caller"]["uid"] >= 0
        # Input that breaks the lexicon never reaches the provider: -32602 with the JSON path.
        with pytest.raises(MCPError) as info:
            await client.call_tool("org.example.test.echo", {"text": "x" * 40})
        assert info.value.error.code == -32602
        assert info.value.error.message == "input.text: must be at most 16 graphemes"


async def test_official_sdk_listen_stream_sees_a_provider_arrive(
    broker: tuple[Path, Any],
) -> None:
    # MCP 2026-07-28: the SDK's `client.listen()` opens a subscriptions/listen stream through
    # the bridge; a provider process registering its tools is announced on it.
    path, _ = broker
    params = StdioServerParameters(
        command=str(VENV_BIN / "kiki"), args=["mcp", "--socket", str(path)]
    )
    script = PROVIDER.format(tests=str(REPO / "tests"), path=str(path))
    async with asyncio.timeout(60), Client(params, mode="auto") as client:
        assert client.session.protocol_version == "2026-07-28"
        async with client.listen(tools_list_changed=True) as sub:
            assert sub.honored.tools_list_changed is True
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
            )
            try:
                assert proc.stdout is not None
                assert await proc.stdout.readline() == b"registered\n"
                assert await anext(sub) == ToolsListChanged()
                tools = await client.list_tools()
                assert "org.example.test.echo" in {t.name for t in tools.tools}
            finally:
                proc.kill()
                await proc.wait()
            # The provider is gone: announced too.
            assert await anext(sub) == ToolsListChanged()
