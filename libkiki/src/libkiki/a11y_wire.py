"""Messages on ``a11y.sock``: FlatBuffers ``kiki.a11y.Message`` roots (schemas/a11y.fbs).

This module turns frames (the bytes after the size prefix, see :mod:`libkiki.framing`) into
typed, immutable messages and back. Python's flatbuffers runtime does not verify buffers, so
decoding checks the file identifier and every offset it follows against the buffer's bounds and
turns any inconsistency into :class:`~libkiki.errors.InvalidFrame`; a corrupted frame never
becomes a half-read message.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import flatbuffers

from libkiki._generated import a11y_generated as fb
from libkiki.errors import InvalidFrame

FILE_IDENTIFIER = b"KA11"
PROTOCOL_VERSION = 1


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


Message = Hello | GetInfo | Info | Error


def _finish(builder: flatbuffers.Builder, request_id: int, body_type: int, body: int) -> bytes:
    fb.MessageStart(builder)
    fb.MessageAddRequestId(builder, request_id)
    fb.MessageAddBodyType(builder, body_type)
    fb.MessageAddBody(builder, body)
    builder.Finish(fb.MessageEnd(builder), FILE_IDENTIFIER)
    return bytes(builder.Output())


def encode(message: Message) -> bytes:
    """The FlatBuffer for ``message`` (without the size prefix)."""
    builder = flatbuffers.Builder(256)
    match message:
        case Hello(request_id, version, peer):
            peer_off = builder.CreateString(peer)
            fb.HelloStart(builder)
            fb.HelloAddProtocolVersion(builder, version)
            fb.HelloAddPeer(builder, peer_off)
            return _finish(builder, request_id, fb.Body.Hello, fb.HelloEnd(builder))
        case GetInfo(request_id):
            fb.GetInfoStart(builder)
            return _finish(builder, request_id, fb.Body.GetInfo, fb.GetInfoEnd(builder))
        case Info():
            counters = []
            for name, value in message.counters:
                name_off = builder.CreateString(name)
                fb.CounterStart(builder)
                fb.CounterAddName(builder, name_off)
                fb.CounterAddValue(builder, value)
                counters.append(fb.CounterEnd(builder))
            fb.InfoStartCountersVector(builder, len(counters))
            for off in reversed(counters):
                builder.PrependUOffsetTRelative(off)
            vec = builder.EndVector()
            name_off = builder.CreateString(message.name)
            version_off = builder.CreateString(message.version)
            status_off = builder.CreateString(message.status)
            fb.InfoStart(builder)
            fb.InfoAddName(builder, name_off)
            fb.InfoAddVersion(builder, version_off)
            fb.InfoAddPid(builder, message.pid)
            fb.InfoAddUptimeMs(builder, message.uptime_ms)
            fb.InfoAddStatus(builder, status_off)
            fb.InfoAddCounters(builder, vec)
            return _finish(builder, message.request_id, fb.Body.Info, fb.InfoEnd(builder))
        case Error(request_id, code, text):
            text_off = builder.CreateString(text)
            fb.ErrorStart(builder)
            fb.ErrorAddCode(builder, code)
            fb.ErrorAddMessage(builder, text_off)
            return _finish(builder, request_id, fb.Body.Error, fb.ErrorEnd(builder))
    raise TypeError(f"not an a11y message: {message!r}")


def _check_table(buf: bytes, pos: int) -> None:
    """Bounds-check the table at ``pos`` and its vtable before the generated code reads it."""
    if pos < 0 or pos + 4 > len(buf):
        raise InvalidFrame("table offset out of bounds")
    (soffset,) = struct.unpack_from("<i", buf, pos)
    vt = pos - soffset
    if vt < 0 or vt + 4 > len(buf):
        raise InvalidFrame("vtable offset out of bounds")
    vt_size, table_size = struct.unpack_from("<HH", buf, vt)
    if vt_size < 4 or vt_size % 2 or vt + vt_size > len(buf) or pos + table_size > len(buf):
        raise InvalidFrame("vtable or table size out of bounds")
    for i in range(4, vt_size, 2):
        (field_off,) = struct.unpack_from("<H", buf, vt + i)
        if field_off >= max(table_size, 4):
            raise InvalidFrame("field offset out of bounds")


def _string(table: Any, getter: str) -> str:
    value = getattr(table, getter)()
    return value.decode() if isinstance(value, bytes) else (value or "")


def decode(frame: bytes) -> Message:
    """Parse one frame; raises :class:`InvalidFrame` for anything but a well-formed Message."""
    if len(frame) < 8:
        raise InvalidFrame(f"frame of {len(frame)} bytes is too short for a FlatBuffer")
    if frame[4:8] != FILE_IDENTIFIER:
        raise InvalidFrame(f"file identifier {frame[4:8]!r} is not {FILE_IDENTIFIER!r}")
    (root,) = struct.unpack_from("<I", frame, 0)
    _check_table(frame, root)
    try:
        msg = fb.Message.GetRootAs(frame, 0)
        request_id = msg.RequestId()
        kind = msg.BodyType()
        body = msg.Body()
        if body is not None:
            _check_table(frame, body.Pos)
        match kind:
            case fb.Body.Hello if body is not None:
                h = fb.Hello()
                h.Init(body.Bytes, body.Pos)
                return Hello(request_id, h.ProtocolVersion(), _string(h, "Peer"))
            case fb.Body.GetInfo:
                return GetInfo(request_id)
            case fb.Body.Info if body is not None:
                i = fb.Info()
                i.Init(body.Bytes, body.Pos)
                counters = []
                for n in range(i.CountersLength()):
                    c = i.Counters(n)
                    if c is not None:
                        _check_table(frame, c._tab.Pos)  # type: ignore[attr-defined]
                        counters.append((_string(c, "Name"), c.Value()))
                return Info(
                    request_id,
                    _string(i, "Name"),
                    _string(i, "Version"),
                    i.Pid(),
                    i.UptimeMs(),
                    _string(i, "Status"),
                    tuple(counters),
                )
            case fb.Body.Error if body is not None:
                e = fb.Error()
                e.Init(body.Bytes, body.Pos)
                return Error(request_id, e.Code(), _string(e, "Message"))
    except InvalidFrame:
        raise
    except (IndexError, struct.error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidFrame(f"corrupted FlatBuffer: {exc.__class__.__name__}") from exc
    raise InvalidFrame(f"unknown or empty message body (type {kind})")
