"""JSON-RPC 2.0 over Unix stream sockets, one JSON text per line, symmetric and MCP-friendly.

* :mod:`libkiki.rpc.protocol` -- the sans-I/O core (parsing, classification, ids, batches),
  with its events and wire helpers in :mod:`libkiki.rpc.messages`.
* :mod:`libkiki.rpc.methods` -- method tables, the request context, the exception boundary.
* :mod:`libkiki.rpc.connection` -- :class:`Connection`, the asyncio layer.
* :mod:`libkiki.rpc.server` -- :func:`serve_unix` and :func:`connect_unix`.
"""

from libkiki.rpc.connection import Connection, ProgressCallback
from libkiki.rpc.messages import Call, RequestId, error_line, validate_request
from libkiki.rpc.methods import Handler, Methods, RequestContext
from libkiki.rpc.protocol import RpcCore
from libkiki.rpc.server import RpcServer, connect_unix, serve_unix

__all__ = [
    "Call",
    "Connection",
    "Handler",
    "Methods",
    "ProgressCallback",
    "RequestContext",
    "RequestId",
    "RpcCore",
    "RpcServer",
    "connect_unix",
    "error_line",
    "serve_unix",
    "validate_request",
]
