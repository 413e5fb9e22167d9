"""What the relay does with a request it has read and accepted (see :mod:`.handshake` for the
ones it refuses): answer its health, serve a file of the dashboard, answer an error, or go on to
the WebSocket upgrade. A HEAD is answered as its GET, without the body (:func:`for_method`),
and never upgraded.

Sans-I/O: the request and the number of live WebSocket connections in, a decision out; the
server fills in the health answer and sends the response.
"""

from __future__ import annotations

import enum
import http
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from kiki_sync_relay.dashboard import Dashboard, packaged
from libkiki.sync.tokens import valid_session_name

HEALTH_PATH = "/healthz"
SESSION_PREFIX = "/session/"


class Route(enum.Enum):
    HEALTH = "health"  # answer the service's info, 200
    UPGRADE = "upgrade"  # a WebSocket: let the handshake go on


@dataclass(frozen=True, slots=True)
class Answer:
    """A plain-HTTP answer in place of the upgrade; ``counter`` is what it counts as, if
    anything beyond ``http_requests``. ``served`` is a whole response (a file of the
    dashboard) in place of ``body`` as JSON."""

    status: http.HTTPStatus
    body: object
    counter: str | None = None
    served: Response | None = None

    def response(self) -> Response:
        if self.served is not None:
            return self.served
        return json_response(self.status, self.body)


def json_response(status: http.HTTPStatus, body: object) -> Response:
    payload = orjson.dumps(body) + b"\n"
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
    return Response(status.value, status.phrase, headers, payload)


def route(
    request: Request, live: int, max_connections: int, dashboard: Dashboard | None = None
) -> Route | Answer:
    """``live`` WebSocket connections are open; ``max_connections`` is the most it holds. The
    health endpoint is answered whatever the load, so a probe tells a full relay from a dead
    one; so is the dashboard, a few files from memory (its WebSocket is what the limit
    bounds). ``dashboard`` defaults to the one the package holds."""
    if request.path == HEALTH_PATH:
        return Route.HEALTH
    if (page := serve_dashboard(request, dashboard or packaged())) is not None:
        return page
    if live >= max_connections:
        return Answer(
            http.HTTPStatus.SERVICE_UNAVAILABLE,
            {"error": "too many connections"},
            counter="connections_refused",
        )
    upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
    if request.method != "GET" or not upgrade or target(request.path) is None:
        return Answer(http.HTTPStatus.NOT_FOUND, {"error": f"no resource at {request.path}"})
    return Route.UPGRADE


def for_method(request: Request, response: Response) -> Response:
    """``response`` as ``request``'s method takes it: for a HEAD the same status and headers
    (its ``Content-Length`` the GET's) and no body (RFC 9110, 9.3.2)."""
    if request.method != "HEAD" or not response.body:
        return response
    return Response(response.status_code, response.reason_phrase, response.headers, b"")


def serve_dashboard(request: Request, dashboard: Dashboard) -> Answer | None:
    """A plain GET (or HEAD) of a dashboard file (a WebSocket there is no session: 404 as
    before)."""
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return None
    served = dashboard.answer(
        urlsplit(request.path).path,
        request.headers.get("If-None-Match"),
        head=request.method == "HEAD",
    )
    if served is None:
        return None
    return Answer(
        http.HTTPStatus(served.status_code), None, counter="dashboard_requests", served=served
    )


def target(path: str) -> tuple[str, str | None] | None:
    """The session a WebSocket's path names and the token in its query, or ``None`` when the
    path names no session (``/session/<1-64 of A-Z a-z 0-9 . _ ->``)."""
    parts = urlsplit(path)
    if not parts.path.startswith(SESSION_PREFIX):
        return None
    name = parts.path[len(SESSION_PREFIX) :]
    if not valid_session_name(name):
        return None
    tokens = parse_qs(parts.query).get("token")
    return name, tokens[0] if tokens else None
