"""The relay's answers for the dashboard's files, sans-I/O: a request in, a response out."""

from __future__ import annotations

import http

import pytest
from websockets.datastructures import Headers
from websockets.http11 import Request

from kiki_sync_relay.core import Answer, Route, route
from kiki_sync_relay.dashboard import CSP, Dashboard, packaged

pytestmark = pytest.mark.unit

FILES = {
    "index.html": b"<!doctype html>",
    "app-0123456789ab.js": b"console.log(1)",
    "notes.txt": b"?",
}


def request(path: str, *headers: tuple[str, str], method: str = "GET") -> Request:
    return Request(path, Headers([("Host", "x"), *headers]), method)


def served(path: str, *headers: tuple[str, str], live: int = 0, method: str = "GET") -> Answer:
    answer = route(request(path, *headers, method=method), live, 10, Dashboard(FILES))
    assert isinstance(answer, Answer), answer
    return answer


def test_files_with_their_type_caching_and_policy() -> None:
    page = served("/dashboard/").response()
    assert (page.status_code, page.body) == (200, b"<!doctype html>")
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.headers["Cache-Control"] == "no-cache"
    assert page.headers["Content-Security-Policy"] == CSP
    script = served("/dashboard/app-0123456789ab.js?x=1").response()
    assert script.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert script.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert script.headers["Content-Length"] == str(len(FILES["app-0123456789ab.js"]))
    other = served("/dashboard/notes.txt").response()
    assert other.headers["Content-Type"] == "application/octet-stream"


def test_an_etag_the_browser_holds_is_answered_304() -> None:
    etag = served("/dashboard/").response().headers["ETag"]
    for held in (etag, f'"other", {etag}', f"W/{etag}"):
        answer = served("/dashboard/", ("If-None-Match", held)).response()
        assert (answer.status_code, answer.body) == (304, b"")
        assert answer.headers["ETag"] == etag
    assert served("/dashboard/", ("If-None-Match", '"other"')).response().status_code == 200
    # "*": any current representation, and every file here has one (RFC 9110, 13.1.2).
    star = served("/dashboard/", ("If-None-Match", "*")).response()
    assert (star.status_code, star.body) == (304, b"")
    # A 304 carries no Content-Length but the 200's (none here): not "0".
    assert "Content-Length" not in star.headers


def test_head_is_a_get_without_the_body() -> None:
    get = served("/dashboard/app-0123456789ab.js").response()
    head = served("/dashboard/app-0123456789ab.js", method="HEAD").response()
    assert (head.status_code, head.body) == (200, b"")
    assert list(head.headers.raw_items()) == list(get.headers.raw_items())
    assert head.headers["Content-Length"] == str(len(FILES["app-0123456789ab.js"]))
    held = served("/dashboard/", ("If-None-Match", "*"), method="HEAD").response()
    assert (held.status_code, held.body) == (304, b"")


def test_the_redirect_carries_the_pages_security_headers() -> None:
    moved = served("/dashboard").response()
    page = served("/dashboard/").response()
    for name in (
        "Content-Security-Policy",
        "X-Content-Type-Options",
        "Referrer-Policy",
        "X-Frame-Options",
        "Cross-Origin-Opener-Policy",
    ):
        assert moved.headers[name] == page.headers[name], name


def test_the_page_may_connect_only_to_its_own_origin() -> None:
    directives = dict(d.strip().split(" ", 1) for d in CSP.split(";"))
    assert directives["connect-src"] == "'self'"


def test_the_dashboard_is_served_at_full_load_and_only_over_plain_http() -> None:
    assert served("/dashboard/", live=10).response().status_code == 200
    moved = served("/dashboard").response()
    assert (moved.status_code, moved.headers["Location"]) == (308, "/dashboard/")
    for path in ("/dashboard/missing.js", "/dashboard/../index.html", "/dashboard//index.html"):
        answer = served(path)
        assert answer.status == http.HTTPStatus.NOT_FOUND, path
    upgrade = route(request("/dashboard/", ("Upgrade", "websocket")), 0, 10, Dashboard(FILES))
    assert isinstance(upgrade, Answer)
    assert upgrade.status == http.HTTPStatus.NOT_FOUND
    session = route(request("/session/s", ("Upgrade", "websocket")), 0, 10, Dashboard(FILES))
    assert session is Route.UPGRADE


def test_the_package_holds_a_page_that_names_files_it_holds() -> None:
    dashboard = packaged()
    page = dashboard.assets["index.html"].body.decode()
    named = [name for name in dashboard.assets if name != "index.html"]
    assert named
    for name in named:
        assert f'"{name}"' in page, name
