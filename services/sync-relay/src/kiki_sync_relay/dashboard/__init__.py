"""The web dashboard's files, as the relay serves them on ``GET /dashboard/``.

The files in ``assets/`` are built from ``services/sync-relay/dashboard/`` (``npm ci && npm run
build``) and committed: ``index.html``, and a script and a style sheet whose names carry a hash
of their content. They are read once, when the relay first serves one, and answered from
memory.

Sans-I/O past that first read: a path and the request's ``If-None-Match`` in, a response out.
"""

from __future__ import annotations

import functools
import hashlib
import http
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType

from websockets.datastructures import Headers
from websockets.http11 import Response

PREFIX = "/dashboard/"

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
# A name with a content hash never changes its bytes: a browser may keep it for good.
_HASHED = re.compile(r"[A-Za-z0-9_-]+-[0-9a-f]{12}\.[a-z]+")

# The page loads its own script and style sheet and opens a WebSocket to where it came from:
# nothing inline, nothing from elsewhere, never framed. ('self' covers ws: and wss: on the
# page's own host and port: CSP Level 3, as browsers have it.)
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_COMMON = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("X-Frame-Options", "DENY"),
)


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str
    cache_control: str


def asset(name: str, body: bytes) -> Asset:
    cache = "public, max-age=31536000, immutable" if _HASHED.fullmatch(name) else "no-cache"
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return Asset(body, _TYPES.get(_suffix(name), "application/octet-stream"), etag, cache)


class Dashboard:
    """The dashboard's files by name (``index.html`` is also the answer for ``/dashboard/``)."""

    def __init__(self, files: Mapping[str, bytes]) -> None:
        self.assets: Mapping[str, Asset] = MappingProxyType(
            {name: asset(name, body) for name, body in files.items()}
        )

    @classmethod
    def packaged(cls) -> Dashboard:
        root = resources.files(__name__) / "assets"
        files = {
            entry.name: entry.read_bytes()
            for entry in (root.iterdir() if root.is_dir() else ())
            # Only names of a known type: a stray file in the package is not published.
            if entry.is_file() and _suffix(entry.name) in _TYPES
        }
        return cls(files)

    def answer(
        self, path: str, if_none_match: str | None, *, head: bool = False
    ) -> Response | None:
        """The response for ``path`` (without its query), or ``None`` if it names no file of
        the dashboard. For ``head`` (a HEAD request) the same headers as a GET's, without the
        body (RFC 9110, 9.3.2)."""
        if path == PREFIX.rstrip("/"):
            return _redirect(PREFIX)
        if not path.startswith(PREFIX):
            return None
        name = path[len(PREFIX) :] or "index.html"
        found = self.assets.get(name)
        if found is None:
            return None
        headers = Headers(list(_COMMON))
        headers["Cache-Control"] = found.cache_control
        headers["ETag"] = found.etag
        if if_none_match is not None and _matches(if_none_match, found.etag):
            status = http.HTTPStatus.NOT_MODIFIED
            return Response(status.value, status.phrase, headers, b"")
        headers["Content-Type"] = found.content_type
        headers["Content-Length"] = str(len(found.body))
        body = b"" if head else found.body
        return Response(http.HTTPStatus.OK.value, http.HTTPStatus.OK.phrase, headers, body)


def _suffix(name: str) -> str:
    return name[name.rfind(".") :] if "." in name else ""


def _matches(if_none_match: str, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag`` (weakly: RFC 9110, 13.1.2), or is ``*`` (any
    current representation: every file here has one)."""
    if if_none_match.strip() == "*":
        return True
    return etag in {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}


def _redirect(location: str) -> Response:
    # The same headers as the page's: a redirect is a response a browser renders too.
    status = http.HTTPStatus.PERMANENT_REDIRECT
    headers = Headers([*_COMMON, ("Location", location), ("Content-Length", "0")])
    return Response(status.value, status.phrase, headers, b"")


@functools.cache
def packaged() -> Dashboard:
    """The dashboard the relay's package holds, read on first use."""
    return Dashboard.packaged()
