"""The relay serves the web dashboard over plain HTTP: ``GET /dashboard/`` and its files, with
their content types, caching and a content security policy, beside every other HTTP rule.

Against a real ``kiki-sync-relay`` process (raw HTTP over TCP, as a browser or curl sends it).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from kikitest.sync_fixtures import DeviceRelay

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceRelay]:
    device = DeviceRelay(Path(tmp_path_factory.mktemp("relay")))
    device.start()
    yield device
    device.close()


def get(
    port: int, path: str, *extra: str, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    head = "".join(f"{line}\r\n" for line in ("Host: 127.0.0.1", *extra))
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(f"{method} {path} HTTP/1.1\r\n{head}\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    raw_head, _, body = data.partition(b"\r\n\r\n")
    lines = raw_head.decode().split("\r\n")
    code = int(lines[0].split(" ")[1])
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    # A 304 has no body whatever it says (RFC 9110, 15.4.5), nor a HEAD's answer.
    if code != 304 and method != "HEAD":
        assert int(headers["content-length"]) == len(body)
    return code, headers, body


def test_the_page_and_its_files_are_served_with_their_types_and_policy(
    relay: DeviceRelay,
) -> None:
    code, headers, page = get(relay.port, "/dashboard/")
    assert code == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    # The same page under its own name, and with a query (a cache buster) after it.
    assert get(relay.port, "/dashboard/index.html")[2] == page
    assert get(relay.port, "/dashboard/?v=2")[2] == page

    html = page.decode()
    script = re.search(r'<script type="module" src="([^"]+)"', html)
    style = re.search(r'<link rel="stylesheet" href="([^"]+)"', html)
    assert script, html
    assert style, html
    for name, kind in ((script[1], "text/javascript"), (style[1], "text/css")):
        code, headers, body = get(relay.port, f"/dashboard/{name}")
        assert code == 200
        assert body
        assert headers["content-type"] == f"{kind}; charset=utf-8"
        # Its name carries its content's hash: kept for good.
        assert headers["cache-control"] == "public, max-age=31536000, immutable"
        again = get(relay.port, f"/dashboard/{name}", f"If-None-Match: {headers['etag']}")
        assert (again[0], again[2]) == (304, b"")


def test_the_page_is_revalidated_by_its_etag(relay: DeviceRelay) -> None:
    _, headers, _ = get(relay.port, "/dashboard/")
    code, _, body = get(relay.port, "/dashboard/", f'If-None-Match: "x", {headers["etag"]}')
    assert (code, body) == (304, b"")
    code, _, body = get(relay.port, "/dashboard/", 'If-None-Match: "stale"')
    assert code == 200
    assert body
    # "*": any current representation (RFC 9110, 13.1.2).
    code, again, body = get(relay.port, "/dashboard/", "If-None-Match: *")
    assert (code, body) == (304, b"")
    assert again["etag"] == headers["etag"]


def test_the_redirect_carries_the_security_headers(relay: DeviceRelay) -> None:
    code, moved, _ = get(relay.port, "/dashboard")
    assert code == 308
    _, page, _ = get(relay.port, "/dashboard/")
    for name in ("content-security-policy", "x-content-type-options", "referrer-policy"):
        assert moved[name] == page[name], name
    assert "connect-src 'self';" in page["content-security-policy"]


def test_the_bare_path_redirects_and_nothing_else_is_served(relay: DeviceRelay) -> None:
    code, headers, _ = get(relay.port, "/dashboard")
    assert (code, headers["location"]) == (308, "/dashboard/")
    for path in (
        "/dashboard/nothing.js",
        "/dashboard/../healthz",
        "/dashboard/%2e%2e/healthz",
        "/dashboard//index.html",
        "/dashboard/assets/index.html",
        "/dashboardx",
    ):
        code, headers, _body = get(relay.port, path)
        assert code == 404, path
        assert headers["content-type"] == "application/json"
    # A WebSocket on the dashboard's path is no session.
    code, _, _ = get(
        relay.port,
        "/dashboard/",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    )
    assert code == 404
    counters = relay.health()["counters"]
    assert counters["dashboard_requests"] >= 1
    assert counters.get("refused_requests", 0) == 0
