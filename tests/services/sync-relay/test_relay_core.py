"""What the relay decides for an accepted request, and the bounds of its settings: no socket."""

from __future__ import annotations

import http

import orjson
import pydantic
import pytest
from websockets.datastructures import Headers
from websockets.http11 import Request

from kiki_sync_relay.config import RelayConfig
from kiki_sync_relay.core import Answer, Route, for_method, json_response, route, target
from libkiki.constellation import spec

pytestmark = pytest.mark.unit

UPGRADE = Headers([("Upgrade", "WebSocket"), ("Connection", "Upgrade")])


def request(path: str, headers: Headers | None = None, method: str = "GET") -> Request:
    return Request(path, headers or Headers(), method)


def test_health_is_answered_however_full_the_relay() -> None:
    assert route(request("/healthz"), live=0, max_connections=1) is Route.HEALTH
    assert route(request("/healthz", UPGRADE), live=5, max_connections=1) is Route.HEALTH


def test_a_websocket_is_upgraded_below_the_limit_and_refused_at_it() -> None:
    assert route(request("/session/s1", UPGRADE), live=1, max_connections=2) is Route.UPGRADE
    full = route(request("/session/s1", UPGRADE), live=2, max_connections=2)
    assert isinstance(full, Answer)
    assert (full.status, full.counter) == (
        http.HTTPStatus.SERVICE_UNAVAILABLE,
        "connections_refused",
    )
    response = full.response()
    assert (response.status_code, orjson.loads(response.body)) == (
        503,
        {"error": "too many connections"},
    )


def test_a_plain_request_for_anything_else_is_not_found_and_not_counted_as_refused() -> None:
    answer = route(request("/nothing"), live=0, max_connections=2)
    assert answer == Answer(http.HTTPStatus.NOT_FOUND, {"error": "no resource at /nothing"})
    response = answer.response()
    assert response.headers["Content-Type"] == "application/json"
    assert int(response.headers["Content-Length"]) == len(response.body)


def test_a_websocket_must_name_a_session() -> None:
    for path in ("/session", "/session/", "/session/a/b", "/session/" + "x" * 65, "/other/s1"):
        answer = route(request(path, UPGRADE), live=0, max_connections=2)
        assert isinstance(answer, Answer), path
        assert answer.status == http.HTTPStatus.NOT_FOUND
    assert target("/session/a.B_c-9?token=abc&x=1") == ("a.B_c-9", "abc")
    assert target("/session/s1") == ("s1", None)
    assert target("/session/s%2F1") is None


def test_the_default_address_is_the_declared_one_and_settings_are_bounded() -> None:
    config = RelayConfig()
    assert (config.host, config.port) == spec("sync-relay").address
    assert RelayConfig(port=0).port == 0  # any free port
    for bad in ({"port": 65536}, {"port": -1}, {"host": ""}, {"max_message": 10}):
        with pytest.raises(pydantic.ValidationError):
            RelayConfig.model_validate(bad)


def test_a_head_is_answered_as_its_get_without_the_body_and_never_upgraded() -> None:
    health = json_response(http.HTTPStatus.OK, {"name": "kiki-sync-relay"})
    head = for_method(request("/healthz", method="HEAD"), health)
    assert (head.status_code, head.body) == (200, b"")
    assert head.headers["Content-Length"] == str(len(health.body))
    assert for_method(request("/healthz"), health) is health
    assert route(request("/healthz", method="HEAD"), live=0, max_connections=1) is Route.HEALTH
    answer = route(request("/session/s1", UPGRADE, "HEAD"), live=0, max_connections=2)
    assert isinstance(answer, Answer)
    assert answer.status == http.HTTPStatus.NOT_FOUND
