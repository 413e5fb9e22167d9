"""JSON-RPC 2.0 over Unix stream sockets, one JSON text per line, symmetric and MCP-friendly.

* :mod:`libkiki.rpc.protocol` -- the sans-I/O core (parsing, classification, ids, batches),
  with its events and wire helpers in :mod:`libkiki.rpc.messages`.
* :mod:`libkiki.rpc.methods` -- method tables, the request context, the exception boundary.
* :mod:`libkiki.rpc.later` -- :class:`Reply` and :class:`Sent`: answers that come later, settled
  in the turn of the event loop that has them (a server forwarding calls); :func:`after_input`:
  work done once the chunk of input being read has been handled (:func:`reading_input`: whether
  one is).
* :mod:`libkiki.rpc.connection` -- :class:`Connection`, the asyncio layer, on a socket or on a
  transport the caller makes (:data:`TransportFactory`); its reading paused and resumed, and
  descriptors the peer passes received (with :mod:`libkiki.rpc.fds`). It composes one part per
  job: :mod:`~libkiki.rpc.reading` (input read and routed, a chunk at a time),
  :mod:`~libkiki.rpc.link` (the write side and flow control), :mod:`~libkiki.rpc.answering`
  (the peer's requests), :mod:`~libkiki.rpc.calling` (ours, with :mod:`~libkiki.rpc.progress`),
  :mod:`~libkiki.rpc.notifying` (our notifications).
* :mod:`libkiki.rpc.server` -- :func:`serve_unix` and :func:`connect_unix`.

The names below are imported from their modules on first use, so that a program needing one
module (``kiki mcp`` reads only the wire helpers of :mod:`~libkiki.rpc.messages`) does not start
the asyncio layer's imports with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from libkiki.rpc.connection import Connection as Connection
    from libkiki.rpc.connection import ProgressCallback as ProgressCallback
    from libkiki.rpc.connection import TransportFactory as TransportFactory
    from libkiki.rpc.later import Reply as Reply
    from libkiki.rpc.later import Sent as Sent
    from libkiki.rpc.later import after_input as after_input
    from libkiki.rpc.later import reading_input as reading_input
    from libkiki.rpc.messages import Call as Call
    from libkiki.rpc.messages import RequestId as RequestId
    from libkiki.rpc.messages import error_line as error_line
    from libkiki.rpc.messages import validate_request as validate_request
    from libkiki.rpc.methods import Handler as Handler
    from libkiki.rpc.methods import Methods as Methods
    from libkiki.rpc.methods import RequestContext as RequestContext
    from libkiki.rpc.protocol import RpcCore as RpcCore
    from libkiki.rpc.server import RpcServer as RpcServer
    from libkiki.rpc.server import connect_unix as connect_unix
    from libkiki.rpc.server import serve_unix as serve_unix

_HOMES = {
    "Call": "messages",
    "Connection": "connection",
    "Handler": "methods",
    "Methods": "methods",
    "ProgressCallback": "connection",
    "RequestContext": "methods",
    "Reply": "later",
    "RequestId": "messages",
    "RpcCore": "protocol",
    "RpcServer": "server",
    "Sent": "later",
    "TransportFactory": "connection",
    "after_input": "later",
    "connect_unix": "server",
    "error_line": "messages",
    "reading_input": "later",
    "serve_unix": "server",
    "validate_request": "messages",
}

__all__ = [
    "Call",
    "Connection",
    "Handler",
    "Methods",
    "ProgressCallback",
    "Reply",
    "RequestContext",
    "RequestId",
    "RpcCore",
    "RpcServer",
    "Sent",
    "TransportFactory",
    "after_input",
    "connect_unix",
    "error_line",
    "reading_input",
    "serve_unix",
    "validate_request",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'libkiki.rpc' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"libkiki.rpc.{home}"), name)
    globals()[name] = value
    return value
