"""asyncio layer of the sensor-publisher: JSON-RPC 2.0 on sensors.sock."""

from libkiki.paths import SENSORS_SOCKET
from libkiki.rpc_service import jsonrpc_service

serve = jsonrpc_service("sensors", SENSORS_SOCKET)
