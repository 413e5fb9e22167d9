"""Messages on ``a11y.sock``: FlatBuffers ``kiki.a11y.Message`` roots (schemas/a11y.fbs).

This module turns frames (the bytes after the size prefix, see :mod:`libkiki.framing`) into
typed, immutable messages and back. Decoding runs the schema-driven verifier of
:mod:`libkiki.flatbuf`: every offset, vtable, vector and string is checked against the buffer,
strings must be UTF-8, enums and union types must be declared, nesting and node counts are
bounded; anything else is :class:`~libkiki.errors.InvalidFrame`. A corrupted frame never becomes
a half-read message.

Every message dataclass starts with ``request_id`` (the envelope's), then the fields of its
table in schema order. Tree data uses named tuples (:class:`Node`, :class:`App`) because a
snapshot holds thousands of them.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

from libkiki.a11y.schema import ACTIONS, CAUSES, FILE_IDENTIFIER, ROLES, SCHEMA, STATES
from libkiki.errors import InvalidFrame
from libkiki.flatbuf import Chunk, Limits, Reader, Writer

__all__ = [
    "ACTIONS",
    "ACTION_NAMES",
    "CAUSES",
    "CAUSE_NAMES",
    "FILE_IDENTIFIER",
    "MAX_ROLE_NAME",
    "PROTOCOL_VERSION",
    "ROLES",
    "ROLE_NAME",
    "ROLE_NAMES",
    "STATES",
    "Ack",
    "ActionRequest",
    "ActionResult",
    "App",
    "Error",
    "GetInfo",
    "Hello",
    "Info",
    "Message",
    "Node",
    "Query",
    "QueryResult",
    "Resync",
    "Snapshot",
    "Subscribe",
    "TreeGone",
    "TreeUpdate",
    "decode",
    "encode",
]

PROTOCOL_VERSION = 1
# Node.role_name's bound in characters (the lexicon's node.roleName; the server refuses longer).
MAX_ROLE_NAME = 64
# What a role_name may be (the server refuses anything else): lower-case words, as AT-SPI names
# its roles. It is printed bare in the agent's outline, so no quotes, brackets, parentheses
# or control characters that could forge a ref, a name or an action there.
ROLE_NAME = re.compile(rf"[a-z0-9 _-]{{1,{MAX_ROLE_NAME}}}")

ROLE_NAMES = {v: k for k, v in ROLES.items()}
ACTION_NAMES = {v: k for k, v in ACTIONS.items()}
CAUSE_NAMES = {v: k for k, v in CAUSES.items()}
STATE_BITS = dict(STATES)


def state_names(states: int) -> list[str]:
    return [name for name, bit in STATE_BITS.items() if states & bit]


def states_of(*names: str) -> int:
    bits = 0
    for name in names:
        try:
            bits |= STATE_BITS[name]
        except KeyError:
            raise ValueError(f"unknown state {name!r}") from None
    return bits


class Rect(NamedTuple):
    x: int
    y: int
    width: int
    height: int


class Node(NamedTuple):
    id: int
    role: int = 0
    name: str = ""
    description: str = ""
    value: str = ""
    states: int = 0
    bounds: tuple[int, int, int, int] | None = None
    actions: tuple[int, ...] = ()
    children: tuple[int, ...] = ()
    tree_id: int = 0
    # The publisher's own name for a role Kiki's enum does not have (role is then unknown).
    role_name: str = ""


class App(NamedTuple):
    tree_id: int
    app_id: str = ""
    pid: int = 0
    uid: int = 0
    unit: str = ""
    label: str = ""


class Counter(NamedTuple):
    name: str
    value: int


@dataclass(frozen=True, slots=True)
class Hello:
    request_id: int
    protocol_version: int
    peer: str


@dataclass(frozen=True, slots=True)
class GetInfo:
    request_id: int


@dataclass(frozen=True, slots=True)
class Info:
    request_id: int
    name: str
    version: str
    pid: int
    uptime_ms: int
    status: str
    counters: tuple[tuple[str, int], ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "pid": self.pid,
            "uptimeSeconds": self.uptime_ms // 1000,
            "status": "ready",
            "statusText": self.status,
            "counters": dict(self.counters),
        }


@dataclass(frozen=True, slots=True)
class Error:
    request_id: int
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class TreeUpdate:
    request_id: int = 0
    tree_id: int = 0
    seq: int = 0
    base_seq: int = 0
    node_id_to_clear: int = 0
    root_id: int = 0
    nodes: tuple[Node, ...] = ()
    removed: tuple[int, ...] = ()
    cause: int = 0
    app: App | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    request_id: int
    tree_id: int
    seq: int


@dataclass(frozen=True, slots=True)
class Subscribe:
    request_id: int = 0
    apps: tuple[str, ...] = ()
    tree_id: int = 0
    root_id: int = 0
    roles: tuple[int, ...] = ()
    max_depth: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    request_id: int
    trees: tuple[TreeUpdate, ...]


@dataclass(frozen=True, slots=True)
class TreeGone:
    request_id: int
    tree_id: int
    app: App | None


@dataclass(frozen=True, slots=True)
class Query:
    request_id: int = 0
    tree_id: int = 0
    app_id: str = ""
    role: int = 0
    name: str = ""
    text: str = ""
    states: int = 0
    limit: int = 0


@dataclass(frozen=True, slots=True)
class QueryResult:
    request_id: int
    nodes: tuple[Node, ...]
    total: int


@dataclass(frozen=True, slots=True)
class ActionRequest:
    request_id: int
    tree_id: int
    node_id: int
    action: int
    value: str = ""
    timeout_ms: int = 0


@dataclass(frozen=True, slots=True)
class ActionResult:
    request_id: int
    message: str = ""


@dataclass(frozen=True, slots=True)
class Resync:
    request_id: int
    tree_id: int = 0
    reason: str = ""


Message = (
    Hello
    | GetInfo
    | Info
    | Error
    | TreeUpdate
    | Ack
    | Subscribe
    | Snapshot
    | TreeGone
    | Query
    | QueryResult
    | ActionRequest
    | ActionResult
    | Resync
)
BODIES: tuple[type, ...] = (
    Hello,
    GetInfo,
    Info,
    Error,
    TreeUpdate,
    Ack,
    Subscribe,
    Snapshot,
    TreeGone,
    Query,
    QueryResult,
    ActionRequest,
    ActionResult,
    Resync,
)


@dataclass(frozen=True, slots=True)
class _Envelope:
    request_id: int
    body: Any


class RawTreeUpdate(NamedTuple):
    """A TreeUpdate whose nodes (and app) are already-encoded chunks: what the server splices."""

    tree_id: int
    seq: int
    base_seq: int
    node_id_to_clear: int
    root_id: int
    nodes: Sequence[Chunk]
    removed: Sequence[int]
    cause: int
    app: Chunk | None


@dataclass(frozen=True, slots=True)
class RawSnapshot:
    trees: Sequence[Chunk]


@dataclass(frozen=True, slots=True)
class RawQueryResult:
    nodes: Sequence[Chunk]
    total: int


def _bind() -> None:
    for tuple_cls in (Node, App, Counter):
        SCHEMA.bind(tuple_cls.__name__, tuple_cls)
    for body in BODIES:
        names = [f.name for f in dataclasses.fields(body)][1:]
        SCHEMA.bind(body.__name__, body, make=partial(body, 0), names=names)
    SCHEMA.bind("Message", _Envelope, make=_open_envelope)
    SCHEMA.bind("TreeUpdate", RawTreeUpdate, encode_only=True)
    SCHEMA.bind("Snapshot", RawSnapshot, encode_only=True)
    SCHEMA.bind("QueryResult", RawQueryResult, encode_only=True)


def _open_envelope(request_id: int, body: Any) -> Message:
    if body is None:
        raise InvalidFrame("the message has no body (or one of an unknown type)")
    if request_id:
        body = dataclasses.replace(body, request_id=request_id)
    return body  # type: ignore[no-any-return]


_bind()
_WRITER = Writer(SCHEMA)

# Generous defaults for a client reading the server; the server passes its own limits.
DEFAULT_LIMITS = Limits(max_depth=8, max_count={"Node": 1_000_000})


def encode(message: Message) -> bytes:
    """The FlatBuffer for ``message`` (without the size prefix)."""
    if not isinstance(message, BODIES):
        raise TypeError(f"not an a11y message: {message!r}")
    return _WRITER.finish(_Envelope(message.request_id, message))


def encode_raw(request_id: int, body: RawTreeUpdate | RawSnapshot | RawQueryResult) -> bytes:
    """A message whose body holds pre-encoded chunks (see :class:`RawTreeUpdate`)."""
    return _WRITER.finish(_Envelope(request_id, body))


PLACEHOLDER_ID = 0xFFFF_FFFF
_REQUEST_ID = struct.Struct("<I")


def with_request_id(frame: bytes, request_id: int) -> bytes:
    """A copy of ``frame`` (built with ``PLACEHOLDER_ID``) answering ``request_id`` instead.

    Lets a big answer (a snapshot) be encoded once and sent to every requester.
    """
    root = _REQUEST_ID.unpack_from(frame, 0)[0]
    vtable = root - struct.unpack_from("<i", frame, root)[0]
    at = root + struct.unpack_from("<H", frame, vtable + 4)[0]
    if _REQUEST_ID.unpack_from(frame, at)[0] != PLACEHOLDER_ID:
        raise ValueError("the frame was not built with PLACEHOLDER_ID")
    out = bytearray(frame)
    _REQUEST_ID.pack_into(out, at, request_id)
    return bytes(out)


def node_chunk(node: Node) -> Chunk:
    return _WRITER.chunk(node)


def app_chunk(app: App) -> Chunk:
    return _WRITER.chunk(app)


def raw_tree_chunk(update: RawTreeUpdate) -> Chunk:
    return _WRITER.chunk(update)


def decode(frame: bytes, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Verify and parse one frame; :class:`InvalidFrame` for anything but a well-formed Message."""
    try:
        message: Message = Reader(SCHEMA, frame, limits).root()
    except InvalidFrame:
        raise
    except (IndexError, struct.error, ValueError, TypeError, RecursionError) as exc:
        raise InvalidFrame(f"corrupted FlatBuffer: {exc.__class__.__name__}") from exc
    return message
