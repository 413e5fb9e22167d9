"""The sync relay answers every plain-HTTP request, including the ones it refuses.

Tier 1 drives the request reader on websockets' StreamReader without a loop; tier 2 sends raw
bytes over TCP to a real ``kiki-sync-relay`` process holding a socket passed as systemd would.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Request
from websockets.streams import StreamReader

from kiki_sync_relay.handshake import Refusal, read_request

pytestmark = pytest.mark.integration

# (raw request, status the relay answers)
REFUSED = {
    "binary garbage": (b"\x00\xff\x13\x37\xde\xad\r\n\r\n", 400),
    "garbage without CRLF": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n", 400),
    "HTTP/9.9": (b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 505),
    "HTTP/2 preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    "POST /healthz with a body": (
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        405,
    ),
    "POST /healthz without a body": (b"POST /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    "DELETE": (b"DELETE /x HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    "chunked GET": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    "GET with a body": (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", 400),
    "malformed header": (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400),
    "half a request, then EOF": (b"GET / HTTP/1.1\r\nHost:", 400),
    "request line too long": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
    "too many headers": (
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n",
        431,
    ),
}


def _read(data: bytes) -> Request | Refusal | None:
    reader = StreamReader()
    parser = read_request(reader)
    next(parser)
    reader.feed_data(data)
    reader.feed_eof()
    try:
        next(parser)
    except StopIteration as done:
        result: Request | Refusal | None = done.value
        return result
    raise AssertionError("the reader wants more than a whole request and EOF")


@pytest.mark.parametrize("case", REFUSED)
def test_reader_refuses_with_a_status(case: str) -> None:
    data, status = REFUSED[case]
    outcome = _read(data)
    assert isinstance(outcome, Refusal), outcome
    assert outcome.status == status
    response = outcome.response()
    assert response.headers["Connection"] == "close"
    assert json.loads(response.body)["error"] == outcome.reason


def test_reader_accepts_a_get_and_is_silent_for_nothing() -> None:
    request = _read(b"GET /healthz?x=1 HTTP/1.0\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(request, Request)
    assert (request.method, request.path, request.protocol) == ("GET", "/healthz?x=1", "HTTP/1.0")
    assert _read(b"") is None
    refusal = _read(b"PUT / HTTP/1.1\r\n\r\n")
    assert isinstance(refusal, Refusal)
    assert refusal.response().headers["Allow"] == "GET, HEAD"
    head = _read(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(head, Request)
    assert head.method == "HEAD"


@pytest.fixture
def relay(spawn_service: Any) -> Iterator[tuple[int, Any]]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    proc, notes = spawn_service("sync-relay", listener=listener, fdname="relay")
    notes.wait_for("READY")
    yield listener.getsockname()[1], proc
    listener.close()


def _exchange(port: int, data: bytes, *, shut: bool = False) -> bytes:
    """Everything the relay sends for ``data`` until it closes (bounded by the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := s.recv(65536):
            received += chunk
        return received


def _status(response: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    version, code, _ = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert int(headers["Content-Length"]) == len(body)
    return int(code), headers, json.loads(body)


def _head(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and whatever else the relay sends for a HEAD of ``path``."""
    response = _exchange(port, f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head, _, rest = response.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), headers, rest


def test_a_head_is_answered_as_its_get_without_a_body(relay: Any) -> None:
    port, _ = relay
    code, headers, rest = _head(port, "/healthz")
    assert (code, rest) == (200, b"")
    assert headers["Content-Type"] == "application/json"
    assert int(headers["Content-Length"]) > 0  # the GET's length
    code, headers, rest = _head(port, "/nothing")
    assert (code, rest) == (404, b"")
    code, headers, rest = _head(port, "/dashboard/")
    assert (code, rest) == (200, b"")
    assert headers["Content-Type"].startswith("text/html")
    assert _health(port)["counters"].get("refused_requests", 0) == 0


def _health(port: int) -> dict[str, Any]:
    code, _, body = _status(_exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert code == 200
    return body


@pytest.mark.parametrize("case", REFUSED)
def test_relay_answers_each_refused_request_then_closes(relay: Any, case: str) -> None:
    port, proc = relay
    data, status = REFUSED[case]
    # The truncated request reaches the relay only as EOF after it, as a half-closing peer sends.
    response = _exchange(port, data, shut=case.startswith("half"))
    assert response, "closed without an answer"
    code, headers, body = _status(response)
    assert code == status, response
    assert headers["Connection"] == "close"
    assert body["error"]
    if status == 405:
        assert headers["Allow"] == "GET, HEAD"
    # The relay is unharmed and counted the refusal.
    assert _health(port)["counters"]["refused_requests"] == 1
    assert proc.poll() is None


def test_other_plain_requests_are_404_and_websockets_still_open(relay: Any) -> None:
    port, _ = relay
    code, _, body = _status(_exchange(port, b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert (code, body) == (404, {"error": "no resource at /nothing"})
    # A peer that connects and leaves without a word is not answered (nothing was asked).
    assert _exchange(port, b"", shut=True) == b""

    async def websocket_close_code() -> int | None:
        # A session without a token: the first message must carry one.
        async with asyncio.timeout(15), connect(f"ws://127.0.0.1:{port}/session/s1") as ws:
            await ws.send(b"\x00\x00\x01\x00")
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None
            return closed.value.rcvd.code

    assert asyncio.run(websocket_close_code()) == 1008

    async def no_session() -> None:
        async with asyncio.timeout(15), connect(f"ws://127.0.0.1:{port}/session"):
            pass

    with pytest.raises(InvalidStatus, match="404"):
        asyncio.run(no_session())
    counters = _health(port)["counters"]
    assert counters.get("refused_requests", 0) == 0
    assert counters["websocket_connections"] == 1


def test_a_flood_of_bad_requests_is_logged_in_a_bounded_number_of_lines(relay: Any) -> None:
    port, proc = relay
    for _ in range(60):
        _exchange(port, b"\x00\x01garbage\r\n\r\n")
    assert _health(port)["counters"]["refused_requests"] == 60
    lines = [line for line in proc.stderr.read().decode().splitlines() if "refused" in line]
    assert 0 < len(lines) <= 11, lines
