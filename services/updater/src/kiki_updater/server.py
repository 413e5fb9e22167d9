"""asyncio layer of the updater: JSON-RPC 2.0 on the socket its declaration names
(``updater.sock``), answering the health request; the update operations come later."""

from libkiki.rpc_service import jsonrpc_service

serve = jsonrpc_service()
