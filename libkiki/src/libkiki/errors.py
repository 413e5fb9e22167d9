"""One exception tree for all of Kiki, each error knowing its wire form.

::

    KikiError                         -32603  dev.kiki.Error.Failed            1011
    ├── ConfigError                   -32603  dev.kiki.Error.Config            1011
    ├── ProtocolError                 -32600  dev.kiki.Error.Protocol          1002
    │   ├── ParseError                -32700  dev.kiki.Error.Parse             1007
    │   ├── InvalidRequest            -32600  dev.kiki.Error.InvalidRequest    1002
    │   ├── FrameTooLarge             -32600  dev.kiki.Error.FrameTooLarge     1009
    │   ├── InvalidFrame              -32600  dev.kiki.Error.InvalidFrame      1007
    │   └── UnsupportedVersion        -32022  dev.kiki.Error.UnsupportedVersion 1002
    ├── MethodNotFound                -32601  dev.kiki.Error.UnknownMethod     1008
    ├── InvalidParams                 -32602  dev.kiki.Error.InvalidArgs       1008
    │   └── ValidationError           -32602  (carries the JSON path and the rule broken)
    ├── SchemaError                   -32001  dev.kiki.Error.Schema            1011
    │   └── LexiconError              -32001  (a malformed or unresolvable lexicon document)
    ├── PermissionDenied              -32003  dev.kiki.Error.AccessDenied      1008
    ├── NotFound                      -32004  dev.kiki.Error.NotFound          1008
    ├── Conflict                      -32009  dev.kiki.Error.Conflict          1008
    ├── LimitExceeded                 -32005  dev.kiki.Error.LimitsExceeded    1013
    ├── Timeout                       -32006  dev.kiki.Error.Timeout           1011
    ├── Cancelled                     -32800  dev.kiki.Error.Cancelled         1000
    ├── Unavailable                   -32010  dev.kiki.Error.Unavailable       1013
    │   ├── PeerGone                  -32011  dev.kiki.Error.PeerGone          1001
    │   └── AddressInUse              -32012  dev.kiki.Error.AddressInUse      1013
    └── ToolError                     -32013  dev.kiki.Error.Tool              1011

The three wire forms:

* ``jsonrpc_code`` -- the JSON-RPC 2.0 error code. -32700..-32603 are the spec's own; -32800 is
  the Language Server Protocol's "request cancelled", which MCP clients also understand; the rest
  sit in the spec's "server error" range (-32000..-32099).
* ``dbus_name`` -- the D-Bus error name sent on the bus.
* ``ws_close_code`` -- the WebSocket close code (RFC 6455 section 7.4.1) used when the error ends
  a WebSocket connection.

Only ``str(error)`` and ``error.data`` ever reach a peer: messages must be written for the peer
(they say what was wrong with *its* input), never carry a traceback or a local path it did not
send. Anything that is not a ``KikiError`` is an internal error: the transport boundary logs it
with its traceback and answers ``-32603`` with no detail (see :func:`to_wire`).
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "INTERNAL_ERROR",
    "AddressInUse",
    "Cancelled",
    "ConfigError",
    "Conflict",
    "FrameTooLarge",
    "InvalidFrame",
    "InvalidParams",
    "InvalidRequest",
    "KikiError",
    "LexiconError",
    "LimitExceeded",
    "MethodNotFound",
    "NotFound",
    "ParseError",
    "PeerGone",
    "PermissionDenied",
    "ProtocolError",
    "SchemaError",
    "Timeout",
    "ToolError",
    "Unavailable",
    "UnsupportedVersion",
    "ValidationError",
    "WireError",
    "error_for_code",
    "to_wire",
]


class KikiError(Exception):
    """Root of every error Kiki raises on purpose. Its message is safe to send to a peer."""

    jsonrpc_code: ClassVar[int] = -32603
    dbus_name: ClassVar[str] = "dev.kiki.Error.Failed"
    ws_close_code: ClassVar[int] = 1011
    # True for an error a peer answered (error_for_code), False for one raised here: a Timeout
    # a provider reports about its own work is not this end's timer running out.
    remote: bool = False

    def __init__(self, message: str = "", *, data: Any = None) -> None:
        super().__init__(message or self.default_message())
        self.message = message or self.default_message()
        self.data = data

    @classmethod
    def default_message(cls) -> str:
        return cls.__name__

    def to_jsonrpc(self) -> dict[str, Any]:
        """The JSON-RPC ``error`` member for this error."""
        error: dict[str, Any] = {"code": self.jsonrpc_code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class ConfigError(KikiError):
    """A configuration file or setting is malformed (it says which and why). At start a service
    exits with 78, EX_CONFIG; at a reload the previous configuration stays."""

    dbus_name = "dev.kiki.Error.Config"


class ProtocolError(KikiError):
    """The peer broke the framing or message protocol."""

    jsonrpc_code = -32600
    dbus_name = "dev.kiki.Error.Protocol"
    ws_close_code = 1002


class ParseError(ProtocolError):
    jsonrpc_code = -32700
    dbus_name = "dev.kiki.Error.Parse"
    ws_close_code = 1007

    @classmethod
    def default_message(cls) -> str:
        return "Parse error"


class InvalidRequest(ProtocolError):
    jsonrpc_code = -32600
    dbus_name = "dev.kiki.Error.InvalidRequest"

    @classmethod
    def default_message(cls) -> str:
        return "Invalid Request"


class FrameTooLarge(ProtocolError):
    """A line or frame is longer than the connection's limit."""

    jsonrpc_code = -32600
    dbus_name = "dev.kiki.Error.FrameTooLarge"
    ws_close_code = 1009

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"frame of {size} bytes exceeds the limit of {limit} bytes",
            data={"size": size, "limit": limit},
        )
        self.size = size
        self.limit = limit


class InvalidFrame(ProtocolError):
    """A binary frame failed verification (bad header, bad identifier, out-of-bounds offsets)."""

    dbus_name = "dev.kiki.Error.InvalidFrame"
    ws_close_code = 1007


class UnsupportedVersion(ProtocolError):
    """The peer asked for a protocol version this end does not speak (MCP's
    UnsupportedProtocolVersionError); ``data`` has ``supported`` and ``requested``."""

    jsonrpc_code = -32022
    dbus_name = "dev.kiki.Error.UnsupportedVersion"

    @classmethod
    def default_message(cls) -> str:
        return "Unsupported protocol version"


class MethodNotFound(KikiError):
    jsonrpc_code = -32601
    dbus_name = "dev.kiki.Error.UnknownMethod"
    ws_close_code = 1008

    @classmethod
    def default_message(cls) -> str:
        return "Method not found"


class InvalidParams(KikiError):
    jsonrpc_code = -32602
    dbus_name = "dev.kiki.Error.InvalidArgs"
    ws_close_code = 1008

    @classmethod
    def default_message(cls) -> str:
        return "Invalid params"


class ValidationError(InvalidParams):
    """Data broke a schema rule. ``path`` is a dotted JSON path such as ``input.track.title``."""

    def __init__(self, path: str, rule: str) -> None:
        super().__init__(f"{path}: {rule}" if path else rule, data={"path": path, "rule": rule})
        self.path = path
        self.rule = rule


class SchemaError(KikiError):
    jsonrpc_code = -32001
    dbus_name = "dev.kiki.Error.Schema"


class LexiconError(SchemaError):
    """A lexicon document is malformed, or a reference in it cannot be resolved."""

    def __init__(self, document: str, path: str, rule: str) -> None:
        where = f"{document}:{path}" if path else document
        super().__init__(
            f"{where}: {rule}", data={"document": document, "path": path, "rule": rule}
        )
        self.document = document
        self.path = path
        self.rule = rule


class PermissionDenied(KikiError):
    jsonrpc_code = -32003
    dbus_name = "dev.kiki.Error.AccessDenied"
    ws_close_code = 1008

    @classmethod
    def default_message(cls) -> str:
        return "Permission denied"


class NotFound(KikiError):
    jsonrpc_code = -32004
    dbus_name = "dev.kiki.Error.NotFound"
    ws_close_code = 1008


class Conflict(KikiError):
    """The request contradicts existing state, e.g. registering an NSID that is already taken."""

    jsonrpc_code = -32009
    dbus_name = "dev.kiki.Error.Conflict"
    ws_close_code = 1008


class LimitExceeded(KikiError):
    """A configured limit (connections, in-flight requests, queue depth, rate) was hit."""

    jsonrpc_code = -32005
    dbus_name = "dev.kiki.Error.LimitsExceeded"
    ws_close_code = 1013


class Timeout(KikiError):
    jsonrpc_code = -32006
    dbus_name = "dev.kiki.Error.Timeout"

    @classmethod
    def default_message(cls) -> str:
        return "Timed out"


class Cancelled(KikiError):
    jsonrpc_code = -32800
    dbus_name = "dev.kiki.Error.Cancelled"
    ws_close_code = 1000

    @classmethod
    def default_message(cls) -> str:
        return "Request cancelled"


class Unavailable(KikiError):
    jsonrpc_code = -32010
    dbus_name = "dev.kiki.Error.Unavailable"
    ws_close_code = 1013


class PeerGone(Unavailable):
    """The other end of a connection went away before answering."""

    jsonrpc_code = -32011
    dbus_name = "dev.kiki.Error.PeerGone"
    ws_close_code = 1001

    @classmethod
    def default_message(cls) -> str:
        return "Peer disconnected"


class AddressInUse(Unavailable):
    """A socket path is held by another live process (a second instance must not steal it)."""

    jsonrpc_code = -32012
    dbus_name = "dev.kiki.Error.AddressInUse"


class ToolError(KikiError):
    """A tool ran and failed: MCP reports it as a result with ``isError``, not a protocol error."""

    jsonrpc_code = -32013
    dbus_name = "dev.kiki.Error.Tool"


class WireError(KikiError):
    """An error received from a peer, rebuilt from its JSON-RPC form with its original code."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message, data=data)
        self.code = code

    def to_jsonrpc(self) -> dict[str, Any]:
        error = super().to_jsonrpc()
        error["code"] = self.code
        return error


_BY_CODE: dict[int, type[KikiError]] = {}
for _cls in (
    ParseError,
    InvalidRequest,
    MethodNotFound,
    InvalidParams,
    SchemaError,
    PermissionDenied,
    NotFound,
    Conflict,
    LimitExceeded,
    Timeout,
    Cancelled,
    Unavailable,
    PeerGone,
    AddressInUse,
    ToolError,
    UnsupportedVersion,
):
    _BY_CODE.setdefault(_cls.jsonrpc_code, _cls)


def error_for_code(code: int, message: str, data: Any = None) -> KikiError:
    """Rebuild a typed error from a JSON-RPC ``error`` member received from a peer.

    Codes Kiki knows become their class (so callers can ``except PermissionDenied``); any other
    code becomes a :class:`WireError` that keeps it.
    """
    error: KikiError
    path, rule = (data.get("path"), data.get("rule")) if isinstance(data, dict) else (None, None)
    cls = _BY_CODE.get(code)
    if code == ValidationError.jsonrpc_code and isinstance(path, str) and isinstance(rule, str):
        error = ValidationError(path, rule)
    elif cls is None:
        error = WireError(code, message, data)
    else:
        error = cls.__new__(cls)
        KikiError.__init__(error, message, data=data)
    error.remote = True
    return error


INTERNAL_ERROR: dict[str, Any] = {"code": -32603, "message": "Internal error"}


def to_wire(exc: BaseException) -> dict[str, Any]:
    """The JSON-RPC error member for any exception: typed errors as themselves, the rest opaque.

    Callers log non-``KikiError`` exceptions with their traceback before sending this.
    """
    if isinstance(exc, KikiError):
        return exc.to_jsonrpc()
    return dict(INTERNAL_ERROR)
