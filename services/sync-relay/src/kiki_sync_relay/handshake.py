"""The relay's reading of an opening HTTP request: whatever it refuses, it answers.

websockets' own reader (``ServerProtocol.parse``) closes the connection without a word when the
request is not one it would upgrade: binary garbage, another HTTP version, a request with a
body or a transfer coding. A person with curl, a load balancer or a client library then learns
nothing about what went wrong. :func:`read_request` reads the same request with websockets'
own line and header parsers, under the same limits, and turns each failure into a
:class:`Refusal` (an HTTP status and a reason) that :func:`parse_opening` answers before it
closes the connection. A request it accepts goes on through websockets' handshake unchanged
(``process_request``, then the upgrade).

Sans-I/O: both run on the protocol's ``StreamReader`` as its parser coroutine; no socket, no
loop, no clock.
"""

from __future__ import annotations

import http
import re
from collections.abc import Callable, Generator
from dataclasses import dataclass

import orjson
from websockets.datastructures import Headers
from websockets.exceptions import InvalidMessage, SecurityError
from websockets.http11 import MAX_LINE_LENGTH, Request, Response, parse_headers
from websockets.protocol import Protocol
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

# RFC 9110 (9.1): every general-purpose server supports GET and HEAD; a HEAD is answered as
# its GET is, without the body (:func:`kiki_sync_relay.core.for_method`).
ALLOWED_METHODS = ("GET", "HEAD")
SUPPORTED_VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")

_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_TARGET = re.compile(rb"[\x21-\x7e]+")


@dataclass(frozen=True, slots=True)
class Refusal:
    """An HTTP error the relay answers instead of serving the request."""

    status: http.HTTPStatus
    reason: str

    def response(self) -> Response:
        body = orjson.dumps({"error": self.reason}) + b"\n"
        headers = Headers(
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Connection", "close"),
            ]
        )
        if self.status is http.HTTPStatus.METHOD_NOT_ALLOWED:
            headers["Allow"] = ", ".join(ALLOWED_METHODS)
        return Response(self.status.value, self.status.phrase, headers, body)


def _bad(reason: str) -> Refusal:
    return Refusal(http.HTTPStatus.BAD_REQUEST, reason)


def read_request(reader: StreamReader) -> Generator[None, None, Request | Refusal | None]:
    """The opening request, or why it is refused; ``None`` if the peer sent nothing at all."""
    try:
        raw = yield from reader.read_line(MAX_LINE_LENGTH, SecurityError)
    except SecurityError:
        return Refusal(
            http.HTTPStatus.REQUEST_URI_TOO_LONG,
            f"request line longer than {MAX_LINE_LENGTH} bytes",
        )
    except EOFError:
        # A peer that connects and leaves (a port probe) asked nothing; a half-closed peer that
        # sent part of a line can still read why it is refused.
        return _bad("the request line is incomplete") if reader.buffer else None
    if not raw.endswith(b"\r\n"):
        return _bad("the request line does not end in CRLF")
    parts = bytes(raw[:-2]).split(b" ")
    if len(parts) != 3:
        return _bad("not an HTTP request line (METHOD TARGET HTTP/1.1)")
    method, target, version = parts
    if not _VERSION.fullmatch(version):
        return _bad("not an HTTP request line (METHOD TARGET HTTP/1.1)")
    if version not in SUPPORTED_VERSIONS:
        return Refusal(
            http.HTTPStatus.HTTP_VERSION_NOT_SUPPORTED,
            f"{version.decode()} is not supported; use HTTP/1.1",
        )
    if not _TOKEN.fullmatch(method) or not _TARGET.fullmatch(target):
        return _bad("the request line has a malformed method or target")
    try:
        headers = yield from parse_headers(reader.read_line)
    except SecurityError:  # a header line too long, or too many of them
        return Refusal(
            http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request header fields too large"
        )
    except EOFError:
        return _bad("the request headers are incomplete")
    except ValueError:
        return _bad("a request header is malformed")
    if method.decode() not in ALLOWED_METHODS:
        return Refusal(
            http.HTTPStatus.METHOD_NOT_ALLOWED,
            f"method {method.decode()} is not allowed; only {', '.join(ALLOWED_METHODS)}",
        )
    # No resource here takes a body, and the reader would otherwise take a body for the next
    # request or for WebSocket frames.
    if "Transfer-Encoding" in headers or not set(headers.get_all("Content-Length")) <= {"0"}:
        return _bad("the relay accepts no request body")
    return Request(target.decode(), headers, method.decode(), version.decode())


def parse_opening(
    protocol: ServerProtocol, refused: Callable[[Refusal], None]
) -> Generator[None, None, None]:
    """A parser coroutine for ``protocol`` (``protocol.parser``) in place of its own.

    ``refused`` hears of each refusal (to count and log it) before the answer is sent. After an
    accepted request it parses WebSocket frames exactly as websockets does.
    """
    outcome = yield from read_request(protocol.reader)
    if isinstance(outcome, Request):
        protocol.events.append(outcome)
        yield from Protocol.parse(protocol)
        return
    if outcome is None:
        protocol.handshake_exc = InvalidMessage("the peer closed before sending a request")
        protocol.send_eof()
        protocol.parser = protocol.discard()
        next(protocol.parser)
    else:
        protocol.handshake_exc = InvalidMessage(outcome.reason)
        refused(outcome)
        # A non-101 response ends the connection: websockets sends EOF after it and discards
        # whatever the peer still sends (e.g. the body of a refused POST) until it closes.
        protocol.send_response(outcome.response())
    yield
