"""asyncio layer of the tool-broker: JSON-RPC 2.0 on tools.sock."""

from libkiki.paths import TOOLS_SOCKET
from libkiki.rpc_service import jsonrpc_service

serve = jsonrpc_service("tools", TOOLS_SOCKET)
