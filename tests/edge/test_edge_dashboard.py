"""The edge Worker serves the web dashboard beside its sessions: the device relay's built page
and files (kiki_sync_relay/dashboard/assets, embedded by edge/build.mjs), fetched from the
Worker under ``workerd`` with the same bytes, types, ETags, caching and policy as the relay
answers them."""

from __future__ import annotations

import http.client
import re
from collections.abc import Iterator

import pytest

from kiki_sync_relay.dashboard import CSP, Dashboard
from kikitest.edge_fixtures import EdgeServer, edge_server

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def edge() -> Iterator[EdgeServer]:
    with edge_server() as server:
        yield server


def get(
    edge: EdgeServer, path: str, method: str = "GET", **headers: str
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=15)
    try:
        conn.request(method, path, headers={k.replace("_", "-"): v for k, v in headers.items()})
        answer = conn.getresponse()
        body = answer.read()
    finally:
        conn.close()
    return answer.status, {k.lower(): v for k, v in answer.getheaders()}, body


def test_every_file_of_the_relay_dashboard_is_served_as_the_relay_serves_it(
    edge: EdgeServer,
) -> None:
    relay = Dashboard.packaged()
    assert "index.html" in relay.assets
    for name, asset in relay.assets.items():
        code, headers, body = get(edge, f"/dashboard/{name}")
        assert code == 200, name
        assert body == asset.body, name
        assert headers["content-type"] == asset.content_type, name
        assert headers["cache-control"] == asset.cache_control, name
        assert headers["etag"] == asset.etag, name
        assert headers["content-security-policy"] == CSP
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
    # The page at the directory's own path, with a query after it too.
    page = relay.assets["index.html"].body
    assert get(edge, "/dashboard/")[2] == page
    assert get(edge, "/dashboard/?v=2")[2] == page


def test_the_page_names_files_the_edge_serves(edge: EdgeServer) -> None:
    _, _, page = get(edge, "/dashboard/")
    names = re.findall(r'(?:src|href)="([^":/]+)"', page.decode())
    assert len(names) >= 2, page
    for name in names:
        assert get(edge, f"/dashboard/{name}")[0] == 200, name


def test_revalidated_by_etag(edge: EdgeServer) -> None:
    _, headers, _ = get(edge, "/dashboard/")
    code, again, body = get(edge, "/dashboard/", If_None_Match=f'"x", {headers["etag"]}')
    assert (code, body) == (304, b"")
    assert again["etag"] == headers["etag"]
    code, _, body = get(edge, "/dashboard/", If_None_Match='"stale"')
    assert code == 200
    assert body


def test_the_bare_path_redirects_and_nothing_else_is_served(edge: EdgeServer) -> None:
    code, headers, _ = get(edge, "/dashboard")
    assert (code, headers["location"]) == (308, "/dashboard/")
    for path in (
        "/dashboard/nothing.js",
        "/dashboard//index.html",
        "/dashboard/assets/index.html",
        "/dashboardx",
    ):
        code, headers, _ = get(edge, path)
        assert code == 404, path
        assert headers["content-type"] == "application/json"
    code, headers, _ = get(edge, "/dashboard/", "POST")
    assert (code, headers["allow"]) == (405, "GET, HEAD")
    # A WebSocket on the dashboard's path is no session.
    code, _, _ = get(
        edge,
        "/dashboard/",
        Upgrade="websocket",
        Connection="Upgrade",
        Sec_WebSocket_Key="dGhlIHNhbXBsZSBub25jZQ==",
        Sec_WebSocket_Version="13",
    )
    assert code == 404


def test_a_head_is_answered_as_the_get_without_a_body(edge: EdgeServer) -> None:
    """RFC 9110: a server supports GET and HEAD; a HEAD answers the GET's status and headers."""
    _, got, page = get(edge, "/dashboard/")
    code, headers, body = get(edge, "/dashboard/", "HEAD")
    assert (code, body) == (200, b"")
    for name in ("content-type", "etag", "cache-control", "content-security-policy"):
        assert headers[name] == got[name], name
    assert headers["content-length"] == str(len(page))
    code, headers, body = get(edge, "/dashboard/nothing.js", "HEAD")
    assert (code, body) == (404, b"")
    assert get(edge, "/dashboard", "HEAD")[0] == 308
