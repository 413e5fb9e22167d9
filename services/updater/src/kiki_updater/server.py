"""asyncio layer of the updater: JSON-RPC 2.0 on updater.sock."""

from libkiki.paths import UPDATER_SOCKET
from libkiki.rpc_service import jsonrpc_service

serve = jsonrpc_service("updater", UPDATER_SOCKET)
